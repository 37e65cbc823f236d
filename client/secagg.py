"""The site side of secure aggregation: Flower's ``secaggplus_mod`` plus an adapter to our train handler.

``secaggplus_mod`` (Flower 1.41, legacy record layout) runs the SecAgg+ stages and, in its "collect masked
vectors" stage, calls the app below it with a legacy fit message (``fitins.parameters`` / ``fitins.config``)
and expects a legacy fit result back; it then masks and quantises the returned weights so that only the
SUM over sites can be unmasked. :func:`legacy_fit_adapter` sits between that mod and our ``@app.train``
handler: it renames the arrays to their state_dict names (sent in the fit config, ``ARRAY_NAMES``),
hands the handler our own message layout (``arrays`` + ``config``), and turns its reply (or refusal)
into the legacy fit result. Evaluate messages pass through both untouched. The site's other mods (audit)
stay outermost.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from common.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES

#: Same key as server.secagg.ARRAY_NAMES (client/ never imports server/).
ARRAY_NAMES = "fedpcr-array-names"


def legacy_fit_adapter(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Legacy fit message -> our train message -> our reply -> legacy fit result (for secaggplus_mod)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    if msg.metadata.message_type != "train" or "fitins.parameters" not in msg.content.array_records:
        return call_next(msg, context)
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    names = str(config.pop(ARRAY_NAMES, "")).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(names) != len(arrays):
        raise ValueError(f"secure aggregation: {len(arrays)} arrays but {len(names)} names in the fit config")
    inner = Message(content=RecordDict({ARRAYS: ArrayRecord({k: Array(np.asarray(a)) for k, a in zip(names, arrays)}),
                                        CONFIG: ConfigRecord(config)}), metadata=msg.metadata)
    reply = call_next(inner, context)
    if reply.has_error():  # a refusal (e.g. privacy budget): the protocol marks this site as dropped
        raise RuntimeError(f"site refused the secure-aggregation round: {reply.error.reason}")
    metrics = dict(reply.content[METRICS])
    weights = reply.content[ARRAYS]
    params = ndarrays_to_parameters([weights[k].numpy() for k in names])
    fitres = FitRes(status=Status(code=Code.OK, message="ok"), parameters=params,
                    num_examples=int(metrics[NUM_EXAMPLES]), metrics=metrics)
    out = compat.fitres_to_recorddict(fitres, keep_input=True)
    for key, record in reply.content.config_records.items():  # the site label
        out.config_records[key] = record
    return Message(out, reply_to=msg)


#: ConfigRecord a SecAgg+ protocol message carries (flwr.common.secure_aggregation.secaggplus_constants).
SECAGG_RECORD = "secaggplus_configs"


def secagg_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's ``secaggplus_mod`` + :func:`legacy_fit_adapter` for SecAgg+ train messages; every other
    message (plain train rounds, evaluate) goes straight through, so one ClientApp serves both kinds of run."""
    if msg.metadata.message_type != "train" or SECAGG_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, lambda m, c: legacy_fit_adapter(m, c, call_next))


__all__ = ["ARRAY_NAMES", "SECAGG_RECORD", "legacy_fit_adapter", "secagg_mod"]
