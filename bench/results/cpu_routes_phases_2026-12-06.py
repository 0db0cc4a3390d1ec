"""The in-process phase timings of bench/README.md "CPU routes", as run on 2026-12-06.

A record, not a maintained bench: it imports code deleted after commit ed9497e, so it runs only in a checkout of that
commit (``git worktree add ../old ed9497e``; run from its root with ``PYTHONPATH=.``):
``python <this file> 5 reprofile,rollout,train``. bench/cpu_routes.py is the maintained end-to-end bench.
"""
import statistics, sys, time, os
import torch
from stat_pl.data.formatting import prompt_messages, encode_example
from stat_pl.data.skillworld import SkillWorldSource
from stat_pl.data.sft_datamodule import collate
from stat_pl.engines.base import SamplingParams, prompt_token_ids
from stat_pl.engines.hf import HFEngine, left_pad
import stat_pl.engines.decode as decode_mod
import stat_pl.models as models_mod
from stat_pl.modules.sft import SFTModule
from stat_pl.hardware import resolve_precision
from stat_pl.records import RecordSource
from stat_pl.models import load_tokenizer, MergedCopy, torch_dtype
from transformers import CompileConfig

R = int(sys.argv[1]) if len(sys.argv) > 1 else 5
phases_wanted = sys.argv[2].split(",") if len(sys.argv) > 2 else ["reprofile", "rollout", "train"]
def med(call, repeats=R):
    call(); ts = []
    for _ in range(repeats):
        t = time.perf_counter(); call(); ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), max(ts)

def gen(model, tok, prompts, s, compiled):
    ids = [prompt_token_ids(tok, p, None) for p in prompts]
    x, m = left_pad(ids, tok.pad_token_id)
    extra = {}
    if compiled:
        c = CompileConfig(dynamic=False, mode="default"); c._compile_all_devices = True; extra["compile_config"] = c
    else:
        extra["disable_compile"] = True
    with torch.no_grad():
        return model.generate(input_ids=x, attention_mask=m, max_new_tokens=s.max_new_tokens, do_sample=s.temperature > 0,
            temperature=s.temperature or None, top_p=None, top_k=None, num_return_sequences=s.n,
            cache_implementation="static", pad_token_id=tok.pad_token_id, **extra)

choice = resolve_precision("cpu"); dtype = choice.dtype
print("capability", torch.backends.cpu.get_cpu_capability(), "threads", torch.get_num_threads(), choice.lightning, flush=True)
MODEL = "offline:smollm2-135m-instruct"
mod = SFTModule(MODEL, quantization="nf4", compute_dtype=dtype); mod.configure_model()
tok = load_tokenizer(MODEL)
qs = SkillWorldSource(split="validation", n=500, levels=[1, 2], max_skills=2).load()[:40]
math = [r for r in RecordSource(path="../shared/data/math/train.jsonl").load() if r.answer][:4]
suffix = "\nGive the final answer in \\boxed{}."
phases = {"reprofile": ([prompt_messages(r.problem) for r in qs], SamplingParams(max_new_tokens=64), 40),
          "rollout": ([prompt_messages(r.problem + suffix) for r in math], SamplingParams(max_new_tokens=64, temperature=1.0, n=4, seed=1), 64)}
def out(phase, route, r):
    print(f"| {phase} | {route} | {r[0]:.2f} | {r[1]:.2f}-{r[2]:.2f} |", flush=True)
copy_fast = mod.generation_model()  # with small_batch_linear per the probe
form = [type(m).__name__ for m in copy_fast.modules() if "Small" in type(m).__name__ or "OneDNN" in type(m).__name__][:1]
print("copy layer form:", form, flush=True)
real_fast_form = models_mod.fastest_form
models_mod.remembered = lambda name, measure, *key: "linear" if name == "small_batch_form" else measure()
copy_plain = MergedCopy(mod.model, torch_dtype(dtype)).refresh(mod.model)
orig_supports = decode_mod.supports
for phase in phases_wanted:
    if phase == "train": continue
    prompts, s, bs = phases[phase]
    e1 = HFEngine(copy_fast, tok, batch_size=bs, progress=False)
    e2 = HFEngine(copy_plain, tok, batch_size=bs, progress=False)
    decode_mod.supports = orig_supports
    out(phase, "engine: LlamaSteps + small-batch linear (all kernels)", med(lambda: e1.generate(prompts, s)))
    out(phase, "engine: LlamaSteps, plain linear", med(lambda: e2.generate(prompts, s)))
    decode_mod.supports = lambda m: False
    out(phase, "engine: model forward + StaticCache, small-batch linear", med(lambda: e1.generate(prompts, s)))
    out(phase, "engine: model forward + StaticCache, plain linear", med(lambda: e2.generate(prompts, s)))
    decode_mod.supports = orig_supports
    out(phase, "generate static cache (merged copy, plain)", med(lambda: gen(copy_plain, tok, prompts, s, False)))
    t = time.perf_counter(); gen(copy_plain, tok, prompts, s, True); print("compile first call", time.perf_counter() - t, flush=True)
    out(phase, "generate static + torch.compile (merged copy)", med(lambda: gen(copy_plain, tok, prompts, s, True)))
    live = mod.model; live.eval()
    out(phase, "generate static cache (live NF4+PEFT)", med(lambda: gen(live, tok, prompts, s, False), 2))
if "train" in phases_wanted:
    recs = SkillWorldSource(split="train", n=2000, levels=[1, 2], max_skills=2).load()[:8]
    batch = collate([{**encode_example(tok, r.problem, r.solutions[0], 192, None), "index": i, "record": i} for i, r in enumerate(recs)], pad_token_id=tok.pad_token_id)
    def stepper(m):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                loss = m.masked_lm_loss(batch)
            loss.backward(); m.model.zero_grad(set_to_none=True)
        return step
    mod.model.train()
    out("train", f"NF4, LoRADropout, {dtype}", med(stepper(mod)))
    from stat_pl.lora_dropout import LoRADropout
    def swap(model):
        for name, m in list(model.named_modules()):
            for k, child in list(m.named_children()):
                if isinstance(child, LoRADropout):
                    setattr(m, k, torch.nn.Dropout(child.p))
    swap(mod.model)
    out("train", f"NF4, nn.Dropout, {dtype}", med(stepper(mod)))
    del mod, copy_fast, copy_plain
    p = SFTModule(MODEL, quantization="none", compute_dtype=dtype); p.configure_model(); p.model.train()
    out("train", f"no quantisation (kernels as installed), LoRADropout, {dtype}", med(stepper(p)))
