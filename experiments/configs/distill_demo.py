"""Demo: distil the bundled model (checkpoints/gemmax-tiny, 4 x 256) into a 2 x 128 student.

    python experiments/distill.py --config experiments/configs/distill_demo.py

Stage `compare` on the pretraining corpus split (every 100th chunk held out, as for the bundled
model): one student init trained twice for the same steps on the same batches -- distilled
(forward KL to the teacher, computed online over the whole vocabulary) and CE only -- and both
measured on held-out text: KL(teacher || student) and perplexity. About 6 minutes on 2 idle
CPU cores. Writes compare.png and summary.json to runs/distill_demo.

Online, not the top-k store, because this toy teacher is unsure (4.6 nats of entropy per held-out
token; its top 32 tokens hold 65% of the mass): a k = 32 store keeps the other 35% as a single
tail bucket, so the student learns little about it. `--config.compare.mode=offline` runs the
store variant (teacher stage + top-k/tail loss); use kd_ratio ~0.5 there so CE shapes the tail.
"""

import importlib.util
import os

# By path: a plain `import distill` could find experiments/distill.py (the script) instead.
_spec = importlib.util.spec_from_file_location(
  "_distill_base_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "distill.py")
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_base = _module.get_config


def get_config():
  c = _base()
  c.stage = "compare"
  c.compare.mode = "online"
  c.teacher.path = "checkpoints/gemmax-tiny"
  c.data.format = "text"
  c.data.seq_len = 256
  c.data.batch_size = 8
  c.data.eval_batch_size = 16
  c.distill.kd_ratio = 1.0
  c.distill.divergence = "forward_kl"
  c.store.dir = ""  # offline mode: workdir/store
  c.store.k = 32
  c.compare.train_chunks = 1200
  c.compare.heldout_chunks = 48
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 20
  c.steps = 200
  c.log_every = 10
  c.eval_every = 50
  c.eval_batches = 0
  c.checkpoint_every = 0
  c.save_student = True
  c.workdir = "runs/distill_demo"
  return c
