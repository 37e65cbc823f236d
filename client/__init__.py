"""Hospital side: Flower ClientApp and the flwr-client launcher."""
