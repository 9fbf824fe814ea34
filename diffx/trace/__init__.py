"""Traces: everything that happens inside one generation, step by step, recorded without changing a number.

- `diffx.trace.tracer`: `TraceOptions` (what to record), `Tracer` (the observer that listens to one image),
  `TraceCollector` (a tracer for every image of a run), `generate_traced` (generation with a tracer on each image,
  a `TracedGeneration`);
- `diffx.trace.record`: `Trace` (the record: typed settings and tokens, per-step tensors, metadata), `trace_meta`,
  `save_trace` / `load_trace` (one safetensors file, checked when read);
- `diffx.trace.checks`: a model's identity (`model_identity`) and the validation of trace files;
- `diffx.trace.attention`: per-layer token maps, the DAAM aggregate, words merged from their tokens, layer labels.

This package re-exports the public API for users (`from diffx.trace import generate_traced, save_trace`). Code
inside diffx imports from the modules themselves: this file imports them all, so a module of diffx that imported
the package would be imported again half-made (an import cycle).
"""

from diffx.trace.checks import TRACE_FORMAT, TRACE_VERSION, model_identity
from diffx.trace.record import Trace, load_trace, save_trace, trace_bytes, trace_meta
from diffx.trace.tracer import (
    DEFAULT_RECORD,
    RECORDABLE,
    TraceCollector,
    TracedGeneration,
    TraceOptions,
    Tracer,
    generate_traced,
)

__all__ = [
    "DEFAULT_RECORD",
    "RECORDABLE",
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Trace",
    "TraceCollector",
    "TraceOptions",
    "TracedGeneration",
    "Tracer",
    "generate_traced",
    "load_trace",
    "model_identity",
    "save_trace",
    "trace_bytes",
    "trace_meta",
]
