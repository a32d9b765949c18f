"""A latent diffusion pipeline: first stage + denoiser + conditioner + schedule."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ldmkit.building import build_component
from ldmkit.conditioning import Conditioning
from ldmkit.errors import InputError, PluginError, SpecError
from ldmkit.guidance import DenoiseStep, check_guidance_scale, denoiser_step, guided_model_fn
from ldmkit.interfaces import Conditioner, Denoiser, FirstStage, ModelFn, Sampler, StepCallback, Task
from ldmkit.numerics import OnNonFinite
from ldmkit.options import SamplerRef, build_sampler
from ldmkit.schedules import NoiseSchedule
from ldmkit.specs import PipelineSpec, dump_spec, load_spec, validate_spec

if TYPE_CHECKING:
    from ldmkit.adapters import Adapter
    from ldmkit.fast.config import FastConfig, Resolved
    from ldmkit.registry import Registry

__all__ = [
    "COMPONENT_FIELDS",
    "SPEC_FILE",
    "InferencePath",
    "Pipeline",
    "check_device",
    "check_guidance_scale",
]

log = logging.getLogger(__name__)

SPEC_FILE = "spec.yaml"
COMPONENT_FIELDS = ("first_stage", "denoiser", "conditioner")


class InferencePath(Protocol):
    """What a pipeline asks of an alternative inference path (``pipeline.fast``, see :mod:`ldmkit.fast`).

    The pipeline knows only this interface; :meth:`Pipeline.optimize` installs the fast path.
    """

    settings: Resolved  # what it computes with (the precision is recorded in the pictures' metadata)

    def denoise_step(self, schedule: NoiseSchedule) -> DenoiseStep:
        """One denoiser call returning epsilon (:data:`ldmkit.guidance.DenoiseStep`)."""
        ...

    def decode(self, reference: FirstStage, latents: Tensor, *, on_nonfinite: OnNonFinite = "retry") -> Tensor:
        """Images from unscaled latents; ``reference`` is the pipeline's own first stage."""
        ...

    def rebuild(self, pipeline: Pipeline) -> InferencePath:
        """The same path for the pipeline's current device and dtype (after :meth:`Pipeline.to`)."""
        ...


def check_device(device: torch.device | str, *, what: str = "device", hint: str | None = None) -> torch.device:
    """``device`` as a torch.device, refused with :class:`InputError` if it names none or one that is absent.

    ``what`` and ``hint`` word the message for where the value came from (an argument, a command-line
    flag, a picture's metadata).
    """
    advice = f"; {hint}" if hint else ""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"{what} {device!r}: not a device; expected e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise InputError(f"{what} {device!r}: CUDA is not available ({why}){advice}")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        visible = f"{count} visible: cuda:0 to cuda:{count - 1}"
        raise InputError(f"{what} {device!r}: no such CUDA device ({visible}){advice}")
    return resolved


class Pipeline:
    """Holds the components and samples latents; ``decode`` turns latents into images in [-1, 1]."""

    def __init__(
        self,
        first_stage: FirstStage,
        denoiser: Denoiser,
        conditioner: Conditioner | None = None,
        schedule: NoiseSchedule | None = None,
        scale_factor: float = 1.0,
        spec: PipelineSpec | None = None,
        latent_size: tuple[int, int] | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.first_stage = first_stage
        self.denoiser = denoiser
        self.conditioner = conditioner
        self.schedule = schedule or NoiseSchedule.from_spec()
        self.scale_factor = float(scale_factor)
        self.spec = spec
        self.latent_size = latent_size or (tuple(spec.latent_size) if spec and spec.latent_size else None)
        # modules are not re-entrant under concurrent .to()/eval(); sampling itself only reads weights
        self.lock = threading.RLock()
        # the fast inference path, off until optimize() is called
        self.fast: InferencePath | None = None
        self._registry = registry
        self.adapters: list[Adapter] = []
        """The adapters applied to this pipeline, in the order applied (see :meth:`add_adapter`)."""
        if conditioner is not None:
            conditioner.attach(first_stage)
        for module in self.modules().values():
            module.eval()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec_or_path: PipelineSpec | dict | str | Path, registry: Registry | None = None) -> Pipeline:
        """Build (untrained) components from a spec object, mapping or file path.

        Components come from ``registry`` (default: the process registry, :func:`ldmkit.get_registry`),
        and so do their children, the samplers and the tasks of the pipeline: see :attr:`registry`.
        The spec's ``adapters`` are applied last (a relative path against the spec file's folder).
        """
        pipe = cls._build(spec_or_path, registry)
        base = Path(spec_or_path).parent if isinstance(spec_or_path, (str, Path)) else None
        pipe.apply_spec_adapters(base)
        return pipe

    @classmethod
    def _build(cls, spec_or_path: PipelineSpec | dict | str | Path, registry: Registry | None) -> Pipeline:
        """The pipeline of a spec, without its adapters."""
        if registry is None:
            from ldmkit.registry import get_registry

            registry = get_registry()
        if isinstance(spec_or_path, (str, Path)):
            spec = load_spec(spec_or_path, registry)
        else:
            spec = validate_spec(spec_or_path, registry)
        from ldmkit.spec_checks import check_buildable

        source = str(spec_or_path) if isinstance(spec_or_path, (str, Path)) else "spec"
        check_buildable(spec, source, registry)  # sizes that cannot be built are refused before building
        parts: dict[str, Any] = {}
        for field_name, comp in spec.components().items():
            # the spec carries its validated Params: the component is built from them as they are
            parts[field_name] = build_component(
                registry, field_name, comp.type, comp.params_for(registry) or comp.params
            )
        schedule = NoiseSchedule.from_spec(spec.schedule)
        return cls(schedule=schedule, scale_factor=spec.scale_factor, spec=spec, registry=registry, **parts)

    @property
    def registry(self) -> Registry:
        """The registry this pipeline builds samplers and tasks from (the one it was built from).

        A pipeline made without one (``Pipeline(...)`` directly) uses the process registry.
        """
        if self._registry is not None:
            return self._registry
        from ldmkit.registry import get_registry

        return get_registry()

    def modules(self) -> dict[str, torch.nn.Module]:
        return {name: m for name in COMPONENT_FIELDS if (m := getattr(self, name)) is not None}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Pipeline:
        """Move every component to ``device`` and/or ``dtype`` (the fast path, if on, is rebuilt there)."""
        if device is not None:
            device = check_device(device)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InputError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        with self.lock:
            for module in self.modules().values():
                module.to(device=device, dtype=dtype)
            if self.fast is not None:  # compiled code and graphs belong to the old device/dtype
                self.fast = self.fast.rebuild(self)
        return self

    def optimize(self, config: FastConfig | str | None = None, /, **overrides: Any) -> Pipeline:
        """Switch sampling and decoding to the fast path (:mod:`ldmkit.fast`) and return ``self``.

        ``config`` is a :class:`~ldmkit.fast.FastConfig` (or a precision name: "fp32", "bf16" or
        "fp16"); keyword ``overrides`` replace its settings, e.g. ``optimize(precision="fp16",
        tile_size=64)``. ``None`` settings follow the device: all on for CUDA (bf16, channels_last,
        torch.compile with static shapes, CUDA graphs), all off elsewhere. The components keep
        their weights; a reduced-precision copy is made where needed. ``pipeline.fast = None``
        turns the fast path off again.
        """
        from ldmkit.fast import optimize

        return optimize(self, config, **overrides)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``spec.yaml`` and one safetensors file per component into ``directory``.

        ``dtype`` (e.g. ``torch.float16``) stores floating-point weights in that type; loading casts
        them back to the components' dtype.
        """

        if self.spec is None:
            raise SpecError("this pipeline has no spec; build it with Pipeline.from_spec to save it")
        from ldmkit.folders import ensure_output_folder

        directory = ensure_output_folder(directory)
        with self._merged_adapters_removed():  # the base weights; the spec's adapters apply again at load
            self._save_weights(directory, dtype)
        spec = self.spec.model_copy(update={"scale_factor": self.scale_factor})
        from ldmkit.checkpoints import atomic_write_text

        atomic_write_text(directory / SPEC_FILE, dump_spec(spec))
        return directory

    def _save_weights(self, directory: Path, dtype: torch.dtype | None) -> None:
        from ldmkit.checkpoints import save_state_dict

        for name, module in self.modules().items():
            state = module.state_dict()
            if dtype is not None:
                state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
            save_state_dict(state, directory / f"{name}.safetensors")

    @classmethod
    def load(
        cls, directory: str | Path, registry: Registry | None = None, device: str | torch.device = "cpu"
    ) -> Pipeline:
        """Load a folder written by :meth:`save` (weights strictly: missing or unexpected keys fail).

        ``registry`` is passed to :meth:`from_spec`.
        """
        from ldmkit.checkpoints import load_into

        directory = Path(directory)
        pipe = cls._build(directory / SPEC_FILE, registry)
        for name, module in pipe.modules().items():
            load_into(module, directory / f"{name}.safetensors", what=name)
        pipe.apply_spec_adapters(directory)  # on the loaded weights
        return pipe.to(device)

    # -- adapters -----------------------------------------------------------------------------------
    def add_adapter(
        self, adapter: Adapter | str | Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> Adapter:
        """Apply an adapter and return it (the handle :meth:`remove_adapter` takes).

        ``adapter`` is an :class:`~ldmkit.adapters.Adapter` instance, a registered adapter's name with
        ``params``, or ``{"type": name, "params": {...}}``; params are validated by the adapter's ``Params``.
        """
        from ldmkit.adapters import Adapter

        if isinstance(adapter, Adapter):
            built = adapter
        else:
            name: Any = adapter
            if isinstance(adapter, Mapping):
                if params is not None:
                    raise InputError("give params inside {type, params} or as the second argument, not both")
                if set(adapter) - {"type", "params"} or not isinstance(adapter.get("type"), str):
                    raise InputError(f"an adapter is {{type, params}}; got keys {sorted(adapter)}")
                name, params = adapter["type"], adapter.get("params")
            built = build_component(self.registry, "adapter", str(name), dict(params or {}))
        with self.lock:
            built.apply(self)
            self.adapters.append(built)
            self._adapters_changed()
        return built

    def load_lora(self, path: str | Path, *, scale: float = 1.0, merge: bool = False, strict: bool = True) -> Adapter:
        """Apply a LoRA file (kohya or diffusers/PEFT layout) to the denoiser and text encoder; see ``lora``."""
        params = {"path": str(path), "scale": scale, "merge": merge, "strict": strict}
        return self.add_adapter("lora", params)

    def load_embedding(self, path: str | Path, *, token: str | None = None) -> Adapter:
        """Bind a textual-inversion embedding to ``token`` (default: the file's own); see ``textual-inversion``."""
        return self.add_adapter("textual-inversion", {"path": str(path), "token": token})

    def remove_adapter(self, adapter: Adapter) -> None:
        """Undo one adapter applied to this pipeline (weights are restored bit for bit)."""
        with self.lock:
            if not any(a is adapter for a in self.adapters):
                raise InputError(f"adapter {adapter.describe()} is not applied to this pipeline")
            adapter.remove()
            self.adapters = [a for a in self.adapters if a is not adapter]
            self._adapters_changed()

    def remove_adapters(self) -> None:
        """Undo every adapter, the last applied first."""
        with self.lock:
            while self.adapters:
                self.remove_adapter(self.adapters[-1])

    def apply_spec_adapters(self, base: str | Path | None = None) -> None:
        """Apply the spec's ``adapters`` in order; a relative ``path`` param is resolved against ``base``."""
        from ldmkit.adapters import resolve_paths

        if self.spec is None:
            return
        for comp in self.spec.adapters:  # validated by the adapter's Params as it is built
            self.add_adapter(comp.type, resolve_paths(comp.params, base))

    def _adapters_changed(self) -> None:
        if self.fast is not None:  # the fast path may hold copies of the weights
            self.fast = self.fast.rebuild(self)

    @contextmanager
    def _merged_adapters_removed(self) -> Iterator[None]:
        """The base weights inside the block: merged adapters taken out, then applied again."""
        merged = [a for a in self.adapters if a.merged]
        with self.lock:
            for adapter in reversed(merged):
                adapter.remove()
            try:
                yield
            finally:
                for adapter in merged:
                    adapter.apply(self)

    # -- tasks --------------------------------------------------------------------------------------
    def task(self, name: str, registry: Registry | None = None) -> Task:
        """The task ``name`` as this pipeline's spec configures it (else the registered task with defaults).

        Built from ``registry``, by default this pipeline's :attr:`registry`.
        """
        registry = registry or self.registry
        comp = self.spec.tasks.get(name) if self.spec is not None else None
        if comp is not None:
            return build_component(registry, "task", comp.type, comp.params_for(registry) or comp.params)
        if self.spec is not None and self.spec.tasks:
            served = ", ".join(sorted(self.spec.tasks))
            raise SpecError(f"this pipeline does not serve task {name!r}; it serves: {served}")
        return build_component(registry, "task", name)

    # -- conditioning and guidance --------------------------------------------------------------
    def condition(self, raw: Any) -> Conditioning:
        """Run the conditioner on a raw input (or pass a Conditioning through)."""
        if isinstance(raw, Conditioning) or raw is None:
            return raw if raw is not None else Conditioning()
        if self.conditioner is None:
            raise SpecError("this pipeline has no conditioner; pass a Conditioning or None")
        return self.conditioner(raw)

    def model_fn(self, cond: Conditioning, uncond: Conditioning | None = None, guidance_scale: float = 1.0) -> ModelFn:
        """``model_fn(x, t) -> eps`` with classifier-free guidance as one batched call.

        Built by :func:`ldmkit.guidance.guided_model_fn`, on the fast path when it is on.
        """
        if self.fast is not None:
            step = self.fast.denoise_step(self.schedule)
        else:
            step = denoiser_step(self.denoiser, self.schedule.alphas_cumprod)
        return guided_model_fn(step, cond, uncond, guidance_scale)

    # -- sampling -----------------------------------------------------------------------------
    @property
    def default_size(self) -> tuple[int, int] | None:
        """Pixel size (H, W) of the pictures made unless told otherwise: ``latent_size`` times the downsampling."""
        if self.latent_size is None:
            return None
        f = self.first_stage.downsample
        return self.latent_size[0] * f, self.latent_size[1] * f

    def latent_shape(self, batch: int, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """(batch, C, h, w) of the latents of pictures of ``size`` (H, W) pixels (None: :attr:`default_size`).

        The sides of ``size`` must be multiples of :func:`ldmkit.sizing.size_multiple` (InputError otherwise).
        """
        from ldmkit.sizing import latent_size_for

        if size is not None:
            height, width = latent_size_for(self, size)
        elif self.latent_size is None:
            raise SpecError("the latent size is unknown: pass x_T or size, or set latent_size in the spec")
        else:
            height, width = self.latent_size
        return (batch, self.first_stage.latent_channels, height, width)

    def initial_noise(
        self,
        batch: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """x_T drawn on the CPU (so results do not depend on the device), one generator per sample if a list.

        ``size`` is the pictures' (H, W) in pixels (None: :attr:`default_size`).
        """
        shape = self.latent_shape(batch, size)
        if isinstance(generator, list):
            noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generator])
        else:
            noise = torch.randn(shape, generator=generator)
        return noise.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def sample(
        self,
        cond: Conditioning | Any = None,
        *,
        sampler: str | Sampler | Mapping[str, Any] | SamplerRef = "ddim",
        steps: int = 50,
        x_T: Tensor | None = None,
        eta: float | None = None,
        uncond: Conditioning | Any = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        init: Tensor | None = None,
        strength: float | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """Sample latents (B, C, h, w) (still multiplied by ``scale_factor``; use :meth:`decode`).

        Safe to call from several threads at once: it only reads weights, each call gets its own
        sampler instance and state, and the random numbers come from the caller's ``generator``
        (pass one per call; a shared generator or the global one makes results depend on timing).
        Do not call :meth:`to` while other threads sample.

        ``sampler`` is a registered sampler's name, ``{"type": name, "params": {...}}`` (params validated
        by that sampler's ``Params``, through :attr:`registry`) or a :class:`~ldmkit.Sampler` instance,
        used as is. ``eta`` scales the fresh noise each step adds; ``None`` is the sampler's own default
        (see :mod:`ldmkit.sampling`).

        Image-to-image: ``init`` (B, C, h, w), scaled latents (:meth:`encode` of pictures), with ``strength`` in
        [0, 1] starts from ``init`` noised with ``x_T`` (by default drawn like ``init``, one generator per sample
        if a list) and takes the last ``int(n * strength)`` of the sampler's ``n`` steps
        (:meth:`ldmkit.sampling.SamplingRun.start`); strength 0 returns ``init``.

        ``size`` (H, W) in pixels samples pictures of another size than the pipeline's
        :attr:`default_size` (its sides multiples of :func:`ldmkit.sizing.size_multiple`); conditioning
        maps that are constant over space (a spatial conditioner's "no map") are fitted to it, maps that
        vary must already have the latent's size (see :mod:`ldmkit.sizing`).
        """
        from ldmkit.sizing import fit_concat

        cond = self.condition(cond)
        uncond = self.condition(uncond) if uncond is not None else None
        chosen: Sampler = build_sampler(self.registry, sampler)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size}")
        extra: dict[str, Any] = {} if eta is None else {"eta": eta}  # None: the sampler's own default
        if init is not None or strength is not None:  # only then: samplers written before img2img take neither
            if not getattr(chosen, "starts_from_init", False):
                raise InputError(f"sampler {type(chosen).name!r} cannot start from given latents (image-to-image)")
            extra.update(init=init, strength=strength)
        if x_T is None and isinstance(init, Tensor):
            from ldmkit.sampling import draw_noise  # the noise drawn as initial_noise draws it, init's shape

            x_T = draw_noise(init.shape, generator, init.to(self.device, self.dtype))
        if x_T is None:
            batch = cond.batch_size or batch_size or (len(generator) if isinstance(generator, list) else 1)
            x_T = self.initial_noise(batch, generator, size)
        elif size is not None and tuple(self.latent_shape(x_T.shape[0], size)) != tuple(x_T.shape):
            raise InputError(f"size {tuple(size)} does not match x_T of shape {tuple(x_T.shape)}")
        latent = (int(x_T.shape[-2]), int(x_T.shape[-1]))
        cond = fit_concat(cond, latent)
        uncond = fit_concat(uncond, latent, "unconditional") if uncond is not None else None
        latents: object = chosen.sample(
            self.model_fn(cond, uncond, guidance_scale),
            self.schedule,
            x_T,
            steps=steps,
            generator=generator,
            callback=callback,
            mask=mask,
            x0=x0,
            progress=progress,
            **extra,
        )
        if not isinstance(latents, Tensor) or tuple(latents.shape) != tuple(x_T.shape):
            got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise PluginError(
                f"sampler {type(chosen).name!r} ({type(chosen).__module__}) returned {got}, "
                f"not latents of x_T's shape {tuple(x_T.shape)}"
            )
        return latents

    @torch.no_grad()
    def decode(self, latents: Tensor, *, on_nonfinite: OnNonFinite = "retry", tile_size: int | None = None) -> Tensor:
        """Images in [-1, 1] (not clamped) from latents: ``first_stage.decode(latents / scale_factor)``.

        Never returns NaN or Inf: a half-precision decode that overflows is redone in float32 (one
        warning) or, with ``on_nonfinite="raise"``, raises :class:`~ldmkit.errors.NumericsError`
        (see :func:`ldmkit.numerics.safe_decode`). Safe to call from several threads.

        ``tile_size`` (latent cells, at least 4) decodes latents with a side longer than it in tiles
        of that size, overlapping by a quarter of it, each decoded with another quarter of context on
        every side and blended linearly over the overlap (:func:`ldmkit.fast.tiled_decode`): the
        decoder's memory then grows with the tile, not the picture. Normalisation and attention see
        one window at a time, so the result approximates the whole decode.
        """
        from ldmkit.numerics import safe_decode

        z = latents / self.scale_factor

        def whole(part: Tensor) -> Tensor:
            if self.fast is not None:
                return self.fast.decode(self.first_stage, part, on_nonfinite=on_nonfinite)
            return safe_decode(self.first_stage, part, on_nonfinite=on_nonfinite)

        if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 4):
            raise InputError(f"tile_size must be an integer >= 4 (latent cells) or None, got {tile_size!r}")
        if tile_size is None or max(z.shape[-2:]) <= tile_size:
            return whole(z)
        from ldmkit.fast.tiling import tiled_decode

        quarter = tile_size // 4
        return tiled_decode(whole, z, tile=tile_size, overlap=quarter, pad=quarter).to(z.dtype)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Scaled latents of images in [-1, 1]: ``first_stage.encode(images) * scale_factor``."""
        return self.first_stage.encode(images) * self.scale_factor
