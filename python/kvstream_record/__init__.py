"""kvstream_record: record a PyTorch model's attention as a kvtrace file.

    from kvstream_record import KVTraceWriter, record, emit

KVTraceWriter writes the layout of docs/TRACE_FORMAT.md (needs numpy and
h5py); record(model, writer) is a context manager that collects the post-RoPE
q, k, v each attention module hands over (emit() or a kvstream_qkv
attribute; the protocol is in hooks.py and docs/RECORDING.md).  torch is
imported only when a recording runs.
"""
from .hooks import emit, record
from .writer import KVTraceWriter, TraceError

__all__ = ["KVTraceWriter", "TraceError", "emit", "record"]
