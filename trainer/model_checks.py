"""Settings that only the base model's files can judge (issue 25): `check` refused none of these, and `run` failed
on them after loading the model, or (clip_skip) with an IndexError mid-step. Each is read from the model's
configs, tokenizer files or safetensors header (model_facts.py), never its weights; inputs.py calls this, so
`check` and the start of `run` refuse the same jobs with the same line."""
from __future__ import annotations

from pathlib import Path

from .config.job import JobConfig
from .families import DDPM, FAMILIES
from .families.flow import T5_XXL
from .model_facts import ModelFacts, in_vocabulary, model_facts


def model_setting_problems(cfg: JobConfig) -> list[str]:
    """Problems between the job's settings and its base model (whose source has passed its own checks)."""
    from .methods.spec import spec_for

    problems = t5_tokenizer_problems(cfg)
    trains_lora = cfg.method in ("lora", "dreambooth") and spec_for(cfg.method).trains_lora(cfg)
    if not (_needs_facts(cfg) or (trains_lora and cfg.lora.init_weights)):
        return problems  # most jobs: nothing else here depends on the model, so nothing more is read
    facts = _facts(cfg)
    problems += _facts_problems(cfg, facts) if facts is not None else []
    if trains_lora and cfg.lora.init_weights:
        arch = facts.arch if facts and facts.arch else (cfg.model.arch if cfg.model.arch != "auto" else None)
        problems += init_weights_problems(cfg, arch)
    return problems


def t5_tokenizer_problems(cfg: JobConfig) -> list[str]:
    """A single-file model whose T5-XXL (model.t5xxl, or inside model.base) has no tokenizer: single files carry
    none, so model.t5_tokenizer (or the local hub cache) must provide it; refused here, by the loader's own
    test and line, rather than after the whole model has loaded."""
    path = Path(cfg.model.base).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return []  # diffusers folders bring their tokenizer; built-in models their tiny one
    from .families import DetectionError, adapter_for, family_from_keys
    from .inputs import safetensors_header

    names, metadata = safetensors_header(path)
    try:
        found = FAMILIES[family_from_keys(names, str(path))]
    except DetectionError:
        return []  # inputs.py names what is wrong with the file
    if not any(te.kind == T5_XXL for te in found.text_encoders):
        return []
    from .families.dit.single_file import t5_tokenizer_problem

    files = {key: str(getattr(cfg.model, key, "") or "") for key in ("clip_l", "clip_g", "t5xxl")}
    folder = Path(cfg.model.t5_tokenizer).expanduser() if cfg.model.t5_tokenizer else None
    problem = t5_tokenizer_problem(adapter_for(found).layout, path, names, metadata, files, folder)
    return [problem] if problem else []


def _needs_facts(cfg: JobConfig) -> bool:
    m, tr, ti = cfg.model, cfg.training, cfg.textual_inversion
    return (m.arch != "auto" or tr.clip_skip > 1 or cfg.method == "textual_inversion"
            or (tr.zero_terminal_snr and m.prediction_type == "auto") or (ti.save_a1111_pt and
                                                                           cfg.method == "textual_inversion"))


def _facts(cfg: JobConfig) -> ModelFacts | None:
    from .inputs import safetensors_header

    path = Path(cfg.model.base).expanduser()
    header = safetensors_header(path) if path.suffix.lower() == ".safetensors" and path.is_file() else None
    return model_facts(cfg.model.base, header)


def _facts_problems(cfg: JobConfig, facts: ModelFacts) -> list[str]:
    from .models.arch import ARCH_NAMES

    m, tr = cfg.model, cfg.training
    problems = []
    if m.arch != "auto" and facts.arch and m.arch != facts.arch:
        problems.append(f"model.arch = {m.arch!r} but model.base = {m.base} is an {ARCH_NAMES[facts.arch]} model "
                        f"({facts.arch}); set model.arch = \"auto\" or \"{facts.arch}\"")
    arch = facts.arch or (m.arch if m.arch != "auto" else None)
    fam = FAMILIES.get(arch)
    layers = facts.text_encoder_layers
    # clip_skip picks hidden_states[-clip_skip] only where the family reads the last layer (SD 1.x / 2.x)
    reads_clip_skip = fam is not None and fam.clip_skip and fam.hidden_layer == -1
    if tr.clip_skip > 1 and reads_clip_skip and layers and tr.clip_skip > layers:
        problems.append(f"training.clip_skip = {tr.clip_skip} is more than the {layers} layers of the text encoder "
                        f"of model.base = {m.base}; allowed: 1 to {layers} for this model")
    if (tr.zero_terminal_snr and m.prediction_type == "auto" and fam is not None and fam.objective == DDPM
            and facts.prediction_type == "epsilon"):
        problems.append(f"training.zero_terminal_snr = true needs a v-prediction model, but model.base = {m.base} "
                        f"predicts {facts.prediction_type!r} (model.prediction_type = \"auto\"): at the last timestep "
                        'an epsilon model sees no image at all; set model.prediction_type = "v_prediction" or turn '
                        "zero_terminal_snr off")
    if cfg.method == "textual_inversion" and fam is not None and not fam.refusal(cfg.method):
        problems += _textual_inversion_problems(cfg, facts, arch)  # (a family without TI says so elsewhere)
    return problems


def _textual_inversion_problems(cfg: JobConfig, facts: ModelFacts, arch: str) -> list[str]:
    from .methods.textual_inversion_spec import vector_tokens

    ti = cfg.textual_inversion
    problems = []
    fam = FAMILIES[arch]
    if ti.save_a1111_pt and len(fam.text_encoders) > 1:
        problems.append(f"textual_inversion.save_a1111_pt = true does not apply to {fam.label}: the A1111 .pt layout "
                        f"holds one text encoder's vectors, and A1111 reads {fam.label} embeddings from the "
                        ".safetensors file; set it to false")
    if not ti.token:
        return problems  # the method's requirements say so
    tokenizer = facts.tokenizer()
    vocab = tokenizer.get_vocab()
    taken = [token for token in vector_tokens(ti.token, ti.vectors) if in_vocabulary(vocab, token)]
    if taken:
        problems.append(f"textual_inversion.token: {taken[0]!r} is already in the tokenizer's vocabulary, so it "
                        'cannot be learned as a new word; choose a new one like "<my-dog>"')
    if ti.init_word and not tokenizer(ti.init_word, add_special_tokens=False).input_ids:
        problems.append(f"textual_inversion.init_word = {ti.init_word!r} has no tokens; use a word like \"dog\" or "
                        '"painting"')
    return problems


def init_weights_problems(cfg: JobConfig, arch: str | None) -> list[str]:
    """lora.init_weights must be a readable, sound LoRA file of this job's network type, rank and alpha."""
    from .config.schema import find_field
    from .methods import lora_init
    from .models.errors import ModelError

    try:
        network = lora_init.read_initial_network(Path(cfg.lora.init_weights))
        lora_init.check_matches_job(network, cfg.lora, arch, find_field("lora.rank").default,
                                    find_field("lora.alpha").default)
    except ModelError as e:
        return [str(e)]
    return []
