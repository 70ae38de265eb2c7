"""record(model, writer): collect what a PyTorch model's attention saw.

The protocol (docs/RECORDING.md, "Recording from PyTorch"): inside its
forward pass, each attention module hands over its queries, keys and values
**after RoPE**, shaped [batch=1, heads, T, head_dim] (or [heads, T, head_dim]),
for the T new positions of this call, in one of two ways:

- it calls `kvstream_record.emit(self, q, k, v)` (optionally `out=` its
  per-head attention output before the output projection), a no-op when no
  recording is active; or
- it sets the attribute `self.kvstream_qkv = (q, k, v)` (or (q, k, v, out)),
  which a forward hook picks up after the module returns.

The layer of a module is its `kvstream_layer` attribute if every attention
module has one, else its order among the attention modules in
model.modules().  Attention modules are those passed as `attention=` (a list
of modules, or a class or tuple of classes), else every module that has a
`kvstream_layer` or `kvstream_qkv` attribute.

Each call of model.forward must feed new positions only (a KV-cached
generation loop, or one forward over a whole sequence): at its end every
layer must have handed over exactly once, with the same T, and those T
positions are appended to the writer.
"""
import contextlib

_active = []  # the recorders in effect (innermost last)


def emit(module, q, k, v, out=None):
    """Hand over one attention call's post-RoPE q, k, v (and optionally the
    per-head output).  Call it from your attention module's forward."""
    if _active:
        _active[-1].take(module, q, k, v, out)


def _heads(x, what, layer):
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"layer {layer}: {what} has batch size {x.shape[0]}; record one sequence (batch 1)")
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"layer {layer}: {what} has shape {list(x.shape)}; expected [1, heads, T, head_dim]")
    return x.detach().float().cpu()


class _Recorder:
    def __init__(self, model, writer, attention, tokens):
        self.writer, self.tokens = writer, tokens
        mods = self._find(model, attention)
        if len(mods) != writer.L:
            raise ValueError(f"found {len(mods)} attention modules but the writer expects n_layers = {writer.L}; "
                             "give each a kvstream_layer attribute or pass attention=")
        if all(hasattr(m, "kvstream_layer") for m in mods):
            layers = [int(m.kvstream_layer) for m in mods]
            if sorted(layers) != list(range(writer.L)):
                raise ValueError(f"kvstream_layer attributes are {layers}; expected each of 0..{writer.L - 1} once")
        else:
            layers = list(range(len(mods)))
        self.layer = {id(m): l for m, l in zip(mods, layers)}
        self.seen = {}
        self.handles = [m.register_forward_hook(self._attr_hook) for m in mods]
        self.handles.append(model.register_forward_hook(self._step_hook))

    @staticmethod
    def _find(model, attention):
        if attention is None:
            return [m for m in model.modules() if hasattr(m, "kvstream_layer") or hasattr(m, "kvstream_qkv")]
        if isinstance(attention, (type, tuple)):
            return [m for m in model.modules() if isinstance(m, attention)]
        return list(attention)

    def take(self, module, q, k, v, out):
        l = self.layer.get(id(module))
        if l is None:
            raise ValueError(f"emit() from a {type(module).__name__} that is not one of the recorded attention modules")
        if l in self.seen:
            raise ValueError(f"layer {l} handed over q, k, v twice in one forward call")
        self.seen[l] = [None if x is None else _heads(x, n, l) for x, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"))]

    def _attr_hook(self, module, args, result):
        qkv = getattr(module, "kvstream_qkv", None)
        if qkv is not None:
            module.kvstream_qkv = None
            self.take(module, *qkv[:3], qkv[3] if len(qkv) > 3 else None)

    def _step_hook(self, model, args, result):
        import torch
        w, seen = self.writer, self.seen
        self.seen = {}
        if not seen:
            return  # a forward that touched no attention (e.g. a sub-call)
        missing = [l for l in range(w.L) if l not in seen]
        if missing:
            raise ValueError(f"layers {missing} handed over nothing in this forward call")
        T = {seen[l][2].shape[1] for l in seen}
        if len(T) != 1:
            raise ValueError(f"layers disagree on the number of new positions: {sorted(T)}")
        q, k, v = (torch.stack([seen[l][i] for l in range(w.L)]) for i in range(3))
        outs = [seen[l][3] for l in range(w.L)]
        out = None if any(o is None for o in outs) else torch.stack(outs)
        tok = None
        if self.tokens is not None:
            if self.tokens is _first_arg and not args:
                raise ValueError("tokens=True stores the model's first positional argument, but forward got none; "
                                 "pass tokens=None or tokens=lambda args: ...")
            ids = self.tokens(args)
            tok = ids.reshape(-1) if hasattr(ids, "reshape") else ids
        w.append(k, v, q, tokens=tok, outputs=out)

    def remove(self):
        for h in self.handles:
            h.remove()


def _first_arg(args):
    return args[0]


@contextlib.contextmanager
def record(model, writer, attention=None, tokens=True):
    """Record every forward call of `model` into `writer` (a KVTraceWriter)
    while the block runs.  tokens=True stores the model's first positional
    argument (the input ids of the new positions) as /tokens; a function
    args -> ids picks them otherwise; None stores none.  The writer is not
    closed here (it may outlive several record blocks)."""
    tok = _first_arg if tokens is True else tokens
    rec = _Recorder(model, writer, attention, tok)
    _active.append(rec)
    try:
        yield rec
    finally:
        _active.remove(rec)
        rec.remove()
