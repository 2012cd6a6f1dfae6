"""Independent, obvious float64 ground truths (never adjusted to match a kernel)."""
from __future__ import annotations

import torch


def leaky_loop(x, decay, normalize=False, scale=None, eps=1e-12):
    """Plain time loop: h_t = x_t + a_h h_{t-1}; then h / max(|h|, eps) * scale."""
    B, H, T, D = x.shape
    a = decay if isinstance(decay, torch.Tensor) else torch.full((H,), float(decay), dtype=x.dtype)
    h = torch.zeros(B, H, D, dtype=x.dtype)
    out = []
    for x_t in x.unbind(2):  # unbind: one gradient stack, where x[:, :, t]'s backward is O(T^2)
        h = x_t + a.view(1, H, 1) * h
        out.append(h)
    y = torch.stack(out, dim=2)
    if normalize:
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
        if scale is not None:
            s = scale.view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale
            y = y * s
    return y


def attention_loop(k, v, scale=None, keep=None, dropout_p=0.0):
    """Row by row: y_t = softmax_j<t(scale <k_t, k_j>) v_{j<t}; y_0 = 0. With ``keep`` (a (B, H, T, T)
    bool mask), the weights of row t are multiplied by keep[..., t, :t] / (1 - dropout_p)."""
    B, H, T, D = k.shape
    s = 1.0 if scale is None else (scale.view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale)
    rows = [v[:, :, :1] * 0]
    for t in range(1, T):
        logits = (k[:, :, t:t + 1] @ k[:, :, :t].transpose(-1, -2)) * s
        probs = torch.softmax(logits, dim=-1)
        if keep is not None:
            probs = probs * keep[:, :, t:t + 1, :t] / (1.0 - dropout_p)
        rows.append(probs @ v[:, :, :t])
    return torch.cat(rows, dim=2)


def _band_of(window, delay, b, h):
    """(window, delay) of sequence b and head h: window None, an int, or one per head (a sequence or an (H,)
    tensor); delay an int, one per sequence ((B,)) or one per sequence and head ((B, H), nested or a tensor)."""
    w = window[h] if isinstance(window, (list, tuple, torch.Tensor)) else window
    d = delay
    if isinstance(delay, (list, tuple, torch.Tensor)):
        d = delay[b]
        if isinstance(d, (list, tuple)) or (isinstance(d, torch.Tensor) and d.dim() == 1):
            d = d[h]
    return (None if w is None else int(w)), int(d)


def band_attention_loop(k, v, scale=None, window=None, delay=1, keep=None, dropout_p=0.0):
    """Sequence by sequence and head by head, the keys each row t sees marked row by row
    (t - window <= j <= t - delay; window None, an int or one per head; delay an int, one per sequence, or one
    per sequence and head), then the softmax over those keys of scale_t <k_t, k_j> (scale None, a float, (H,),
    (H, T) or (B, H, T)), times v_j; y_t = 0 when row t sees no key. ``keep`` as in attention_loop.
    The softmax is taken over the (T, T) logits of a head at once, masked by the marks: slicing k row by row
    would make autograd write a zero gradient of k's full size for every row (O(T^2) memory traffic, minutes
    at the GPU tests' sizes)."""
    B, H, T, D = k.shape
    heads = []
    for b in range(B):
        for h in range(H):
            w, d = _band_of(window, delay, b, h)
            visible = torch.zeros(T, T, dtype=torch.bool)
            for t in range(T):
                lo, hi = 0 if w is None else max(t - w, 0), min(t - max(d, 0), T - 1)
                if hi >= lo:
                    visible[t, lo:hi + 1] = True
            visible = visible.to(k.device)
            if scale is None:
                s = 1.0
            elif not isinstance(scale, torch.Tensor):
                s = scale
            elif scale.dim() == 1:
                s = scale[h]
            else:
                s = (scale[b] if scale.dim() == 3 else scale)[h][:, None]  # (T, 1): row t's scale
            kh = k[b, h]
            logits = (kh @ kh.T) * s
            empty = ~visible.any(dim=-1, keepdim=True)  # a row that sees no key: softmax over all, then zeroed
            probs = torch.softmax(torch.where(visible | empty, logits, float("-inf")), dim=-1) * ~empty
            if keep is not None:
                probs = probs * keep[b, h] / (1.0 - dropout_p)
            heads.append(probs @ v[b, h])
    return torch.stack(heads).view(B, H, T, -1)


def attention_dense(k, v, scale=None, keep=None, dropout_p=0.0):
    """attention_loop's function written densely (the T x T logits at once), for long sequences on the
    GPU: masked softmax over j < t with row 0 exactly 0, then the optional keep mask / (1 - dropout_p)."""
    B, H, T, D = k.shape
    s = 1.0 if scale is None else (scale.view(1, H, 1, 1) if isinstance(scale, torch.Tensor) else scale)
    lower = torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1)
    masked = ((k @ k.transpose(-1, -2)) * s).masked_fill(~lower, float("-inf"))
    row_max = masked.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)  # row 0: no key
    w = torch.exp(masked - row_max)
    probs = w / w.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    if keep is not None:
        probs = probs * keep / (1.0 - dropout_p)
    return probs @ v


def peek_ahead_loop(x, mix, scale=None, eps=1e-12):
    """Row by row: z_t = (1 - c) x_{t+1} + c x_t (x_T = 0); y_t = scale * z_t / max(|z_t|, eps)."""
    B, H, T, D = x.shape
    c = mix.view(1, H, 1) if isinstance(mix, torch.Tensor) else mix
    s = 1.0 if scale is None else (scale.view(1, H, 1) if isinstance(scale, torch.Tensor) else scale)
    rows, xs = [], x.unbind(2)  # unbind: one gradient stack (x[:, :, t]'s backward is O(T^2))
    for t in range(T):
        nxt = xs[t + 1] if t + 1 < T else torch.zeros_like(xs[t])
        z = (1 - c) * nxt + c * xs[t]
        rows.append(s * z / z.norm(dim=-1, keepdim=True).clamp_min(eps))
    return torch.stack(rows, dim=2)


def slots_dense(q, slot_keys, slot_values, out_scale=None, keep=None, dropout_p=0.0):
    """Dense softmax over every slot, per head: c_h * (softmax(q K_h^T) * keep / (1 - p)) V_h."""
    H = q.shape[1]
    probs = torch.softmax(torch.einsum("bhtd,hpd->bhtp", q, slot_keys), dim=-1)
    if keep is not None:
        probs = probs * keep.to(probs.dtype) / (1.0 - dropout_p)
    y = torch.einsum("bhtp,hpd->bhtd", probs, slot_values)
    if out_scale is None:
        return y
    return y * (out_scale.view(1, H, 1, 1) if isinstance(out_scale, torch.Tensor) else out_scale)
