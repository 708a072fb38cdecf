# SPDX-License-Identifier: Apache-2.0
"""Model creation and weight loading: timm ViTs plus the project's LITv2, with errors a user can act on."""
from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from ..errors import ExporterError
from . import digits, litv2  # noqa: F401  register vit_digits and litv2_small/medium/base with timm

SUPPORTED = "timm VisionTransformer models (deit_*, vit_*, the trained fixture vit_digits) and litv2_small/medium/base"


def is_supported(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer) or getattr(model, "exporter_family", None) == "litv2"


def create_model(
    name: str, weights: str = "pretrained", seed: int = 0, img_size: Optional[int] = None, **model_args
) -> nn.Module:
    """Build `name` in eval mode with `weights`: 'pretrained' (timm hub), 'random' (seeded), or a checkpoint path.

    `model_args` go to the model's constructor (e.g. LITv2's alpha). Random weights come from a generator
    seeded with `seed` inside a fork of torch's RNG: the caller's random state is left as it was."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        raise ExporterError(
            f"Unknown model '{name}'.",
            (f"Did you mean {', '.join(close)}? " if close else "")
            + "Use a timm model name (python -c \"import timm; print(timm.list_models('deit*'))\") or litv2_small/medium/base.",
        )
    kwargs = dict(model_args) if img_size is None else {**model_args, "img_size": img_size}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
    except (AssertionError, ValueError, RuntimeError, TypeError) as e:
        raise ExporterError(
            f"Could not build {name} at image size {img_size}: {e}",
            "Pass an --img-size the model supports (a multiple of its patch size), or omit it for the default.",
        ) from e
    if not is_supported(model):
        raise ExporterError(
            f"{name} is a {type(model).__name__}, not a Vision Transformer; exporter handles {SUPPORTED}.",
            "Pick a ViT, e.g. --model deit_small_patch16_224.",
        )
    check_img_size(model, name)
    if weights == "pretrained":
        model = _pretrained(name, model, kwargs)
    elif weights != "random":
        _load_checkpoint(model, Path(weights))
    return model.eval()


def check_img_size(model: nn.Module, name: str) -> None:
    """Each patch (or LITv2's total stride) must tile the image exactly; say which sizes work."""
    stride = getattr(model, "total_stride", None)
    if stride is None:
        stride = model.patch_embed.patch_size[0]
    h, w = input_size(model)
    if h % stride or w % stride:
        raise ExporterError(
            f"Image size {h}x{w} is not divisible by {name}'s stride {stride}.",
            f"Use --img-size a multiple of {stride}, e.g. {max(stride, round(h / stride) * stride)}.",
        )


def check_fits(model: nn.Module, name: str, batch: int) -> None:
    """Refuse, before any export, a model whose attention cannot fit this machine's memory at `batch` images: one
    block's attention scores and their softmax, batch x heads x tokens^2 in fp32 (a lower bound: the runtimes hold
    more). A ViT at a huge --img-size would otherwise run one attention op for many minutes, or until killed."""
    tokens = getattr(getattr(model, "patch_embed", None), "num_patches", None)
    if not isinstance(tokens, int):  # LITv2: windowed attention, no global token count
        return
    tokens += getattr(model, "num_prefix_tokens", 0)
    heads = max((m.num_heads for m in model.modules() if isinstance(getattr(m, "num_heads", None), int)), default=1)
    needed = 2 * batch * heads * tokens**2 * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory // 2:
        h, w = input_size(model)
        raise ExporterError(
            f"{name} at {h}x{w} has {tokens} tokens: its attention alone needs {needed / 2**30:.1f} GiB at batch {batch}, "
            f"more than half of this machine's {memory / 2**30:.0f} GiB.",
            "Use a smaller --img-size or --batch (the attention grows with the square of the tokens).")


def input_size(model: nn.Module) -> tuple[int, int]:
    """(H, W) the model was built for."""
    if hasattr(model, "patch_embed") and getattr(model.patch_embed, "img_size", None) is not None:
        return tuple(model.patch_embed.img_size)
    return tuple(model.pretrained_cfg["input_size"][1:])


def _pretrained(name: str, model: nn.Module, kwargs: dict) -> nn.Module:
    """timm hub weights, failing in seconds (not after minutes of retries) when the hub is unreachable."""
    hint = "Use --weights PATH for a local checkpoint (.pth/.pt/.safetensors) or --weights random to build without weights."
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    shipped = model.pretrained_cfg.get("file")  # weights inside the package (vit_digits): no hub
    if shipped and Path(shipped).is_file():
        return timm.create_model(name, pretrained=True, **kwargs)
    if not offline and not _reachable("huggingface.co"):
        raise ExporterError(f"Pretrained weights for {name} need huggingface.co, which is unreachable from here.", hint)
    try:
        pretrained = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # the hub raises many types (LocalEntryNotFoundError, OSError, HTTPError...)
        why = "HF_HUB_OFFLINE is set and they are not in the local cache" if offline else f"{type(e).__name__}: {e}"
        raise ExporterError(f"Could not load pretrained weights for {name}: {why}.", hint) from e
    return pretrained


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_checkpoint(model: nn.Module, path: Path) -> None:
    """A timm-layout checkpoint (.pth/.pt/.safetensors; 'model'/'state_dict' wrappers unwrapped)."""
    if not path.is_file():
        raise ExporterError(
            f"--weights '{path}' is neither 'pretrained', 'random' nor an existing checkpoint file.",
            "Pass a path to a .pth/.pt/.safetensors file, or --weights random.",
        )
    from timm.models import load_checkpoint, load_state_dict

    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    if filter_fn is None:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

        filter_fn = checkpoint_filter_fn if isinstance(model, VisionTransformer) else None
    if path.suffix.lower() in (".npz", ".npy"):  # timm hands these to the model's own loader
        try:
            load_checkpoint(model, str(path), strict=True, filter_fn=filter_fn)
        except Exception as e:
            raise ExporterError(f"Could not load checkpoint {path}: {type(e).__name__}: {_summarise_mismatch(str(e))}", _CKPT_FIX) from e
        return
    # Reading and fitting are separate steps, so an unreadable file is not reported as a wrong --model.
    if path.stat().st_size == 0:
        raise ExporterError(f"Checkpoint {path} is empty (0 bytes).", "Copy or download the checkpoint again; the file was truncated.")
    try:
        state = load_state_dict(str(path))
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError(f"holds a {type(state).__name__} without tensors, not a state dict")
    except Exception as e:
        why = _unreadable_reason(path, e)
        raise ExporterError(f"Could not read checkpoint {path}: it is not a torch or safetensors state dict ({why}).", _CKPT_FIX) from e
    try:
        if filter_fn is not None:
            state = filter_fn(state, model)
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExporterError(
            f"Checkpoint {path} does not fit {type(model).__name__}: {_summarise_mismatch(str(e))}",
            "Check that the checkpoint was trained for this --model (same size and patch), in timm's key layout.",
        ) from e


_CKPT_FIX = "Pass a .pth/.pt (torch.save of a state dict, optionally under 'model'/'state_dict') or a .safetensors file."


def _unreadable_reason(path: Path, e: Exception) -> str:
    """Why the file is not a state dict, from its format rather than the exception type.

    Random or foreign bytes that are not a zip archive (torch.save's format since 1.6) fall through to the
    legacy pickle reader, which fails with whatever its opcodes happen to trip on (IndexError, KeyError,
    UnicodeDecodeError...): none of those names the problem.
    """
    import zipfile

    chain = []
    cause = e
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    # torch's weights_only refusal names the global it would not load: that is the useful line
    refusal = next((c for c in chain if "Unsupported global" in str(c)), None)
    if refusal is None and path.suffix.lower() != ".safetensors" and not zipfile.is_zipfile(path):
        return "its bytes are not a pickle written by torch.save"
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _summarise_mismatch(message: str, limit: int = 400) -> str:
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit] + "..."
