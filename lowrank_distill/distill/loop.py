"""The distillation loop: `run(config, workdir)`, resumable.

As flax's `examples/*/train.py`: the plan and initial state from the config
(`planning`), one jitted step of the method (`dm`, `gm`, `tm`, `bptt`),
then the loop with metrics, evaluations, pictures and checkpoints, and the
export.
"""

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import tqdm
from absl import logging

from lowrank_distill import (
  analysis,
  checkpoint,
  data,
  evaluate,
  models,
  rng,
  sharding,
)
from lowrank_distill import identity as identity_lib
from lowrank_distill import workdir as workdir_lib
from lowrank_distill.distill import export as export_lib
from lowrank_distill.distill import planning
from lowrank_distill.distill.objective import Plan
from lowrank_distill.distill.step import averaged
from lowrank_distill.parameterize import budget as budget_lib


def _evaluate(key, trainable, plan: Plan, workdir, mesh) -> dict:
  settings = dict(plan.evaluation)
  lr = export_lib.learned_lr(trainable)
  if lr is not None:
    settings["lr"] = lr
  results = evaluate.evaluate_on_test_set(
    key,
    plan.reconstructor.materialize(trainable["images"]),
    export_lib.labels_of(trainable, plan),
    plan.dataset,
    mesh=mesh,
    log=evaluate.ModelLog(workdir / evaluate.MODEL_LOG),
    **settings,
  )
  return {name: r.to_json() for name, r in results.items()}


def _identity_config(config) -> dict:
  """The config without the fields a resumed run may change."""
  return identity_lib.identity(config.to_dict(), planning.RESUMABLE_FIELDS)


def check_workdir(workdir: pathlib.Path, config) -> None:
  """Refuses a workdir written by another config, before writing anything."""
  workdir_lib.check_config(
    workdir, config, resumable_fields=planning.RESUMABLE_FIELDS, what="a run"
  )


# The last iteration's set, beside the average that synset/ holds, when a
# run averages its set (`distill.ema_decay`).
LAST_SET = "synset_last"


def midrun_export_name(step: int) -> str:
  """The folder of the set a mid-run evaluation (`eval_every`) scored."""
  return f"synset_{step:06d}"


def _truncate_metrics(writer: workdir_lib.MetricsWriter, step: int) -> None:
  """Drops records past the restored step (they will be produced again)."""
  if not workdir_lib.is_writer():
    return
  kept = [r for r in writer.read() if r["step"] <= step]
  tmp = writer.path.with_suffix(".tmp")
  tmp.write_text("".join(workdir_lib.json_line(r) for r in kept))
  tmp.replace(writer.path)


def run(
  config,
  workdir,
  *,
  dataset: data.Dataset | None = None,
  final_eval: bool = True,
) -> dict:
  """Distils a synthetic set; resumes from the workdir's last checkpoint.

  Writes config.json, metrics.jsonl, checkpoints/, images/*.png, synset/
  (the export), eval_models.jsonl (`evaluate.ModelLog`) and results.json
  into `workdir`; every mid-run evaluation's set goes to synset_<step>/
  (`midrun_export_name`), beside synset.npz as synset_<step>.npz. With
  `distill.ema_decay` the set evaluated and exported is the average
  (`step.averaged`), and the last iteration's own set goes to
  synset_last/ (`LAST_SET`), unevaluated.

  Args:
    config: the run's config.
    workdir: where everything is written.
    dataset: distil (and evaluate on) this dataset instead of loading
      `config.dataset`.
    final_eval: evaluate the final set with `config.eval` (else `results` is
      empty: a caller that trains on the export itself skips the cost).

  Returns:
    The final evaluation results, per architecture.
  """
  workdir = pathlib.Path(workdir)
  plan = planning.make_plan(config, dataset=dataset)
  objective = planning.OBJECTIVES[plan.method]
  mesh = sharding.mesh_from_config(config)
  objective.check_mesh(plan, mesh)
  check_workdir(workdir, config)
  process_0 = workdir_lib.is_writer()
  if process_0:
    print(budget_lib.budget_table(plan.budget), flush=True)

  root = jax.random.key(plan.seed)
  state, optimizer = planning.initial_state(rng.stream(root, "init"), plan)
  state = sharding.put(state, mesh)
  train_step = sharding.jit(
    objective.build_step(plan, optimizer, mesh=mesh),
    mesh,
    compiler_options=models.compiler_options(plan.conv_impl),
  )

  writer = workdir_lib.start(workdir, config)
  schedule = plan.schedule
  # Mid-run evaluations and the end export the same way.
  export_set = functools.partial(
    export_lib.export,
    plan=plan,
    method=plan.method,
    dataset_config=config.dataset.to_dict(),
  )
  with checkpoint.Checkpointer(
    workdir / "checkpoints", config=_identity_config(config)
  ) as ckpt:
    restored = ckpt.restore_or_none(sharding.abstract(state, mesh))
    if restored is not None:
      state, _ = restored
      logging.info("Resumed from step %d", int(state.step))
      _truncate_metrics(writer, int(state.step))

    inputs = objective.inputs(plan, mesh)
    distill_key = rng.stream(root, "distill")
    eval_key = rng.stream(root, "eval")
    start = int(state.step)
    logged, tick = [], time.time()
    progress = tqdm.trange(
      start,
      schedule.iterations,
      initial=start,
      total=schedule.iterations,
      desc=f"{plan.method}/{plan.budget.param}",
      disable=not workdir_lib.is_writer(),
    )
    for step in progress:
      step_key = sharding.put(jax.random.fold_in(distill_key, step), mesh)
      state, metrics = train_step(state, step_key, *inputs(step))
      # The loss and any other scalars the step reports (HaBa's terms).
      logged.append({k: v for k, v in metrics.items() if k != "skipped"})
      done = step + 1
      if done % schedule.log_every == 0 or done == schedule.iterations:
        means = {
          name: float(jnp.mean(jnp.stack([m[name] for m in logged])))
          for name in logged[0]
        }
        progress.set_postfix(
          loss=f"{means['loss']:.4g}", skipped=int(state.skipped)
        )
        writer.write(
          done,
          **means,
          skipped=int(state.skipped),
          seconds_per_step=(time.time() - tick) / len(logged),
          **analysis.set_statistics(
            state.trainable, images_per_class=plan.images_per_class
          ),
        )
        logged, tick = [], time.time()
      if (
        schedule.eval_every
        and done % schedule.eval_every == 0
        and done < schedule.iterations
      ):
        # The set this evaluation scores is kept: the final export is the
        # last iteration's set (or average), and checkpoints of this step
        # are rotated out.
        reported = averaged(state)
        export_set(workdir / midrun_export_name(done), reported)
        results = _evaluate(
          jax.random.fold_in(eval_key, done),
          reported,
          plan,
          workdir,
          mesh,
        )
        writer.write(done, eval=results)
      if schedule.image_every and done % schedule.image_every == 0:
        export_lib.save_pictures(workdir, done, averaged(state), plan)
      if done % schedule.checkpoint_every == 0 or done == schedule.iterations:
        ckpt.save(done, state)
    ckpt.wait()

  final_step = int(state.step)
  reported = averaged(state)
  # Refused before the export and the evaluation; the checkpoints stay.
  for warning in export_lib.check_result(
    reported, plan, skipped=int(state.skipped), iterations=final_step
  ):
    logging.warning("%s", warning)
    if process_0:
      print(f"warning: {warning}", flush=True)
  export_lib.save_pictures(workdir, final_step, reported, plan)
  exported = export_set(workdir / "synset", reported)
  if plan.ema_decay:
    export_set(workdir / LAST_SET, state.trainable)
  results = {}
  if final_eval:
    results = _evaluate(
      jax.random.fold_in(eval_key, final_step),
      reported,
      plan,
      workdir,
      mesh,
    )
    writer.write(final_step, eval=results, final=True)
  summary = {
    "method": plan.method,
    "param": plan.budget.param,
    "budget": dataclasses.asdict(plan.budget),
    "storage_floats": exported.storage_floats,
    "skipped_updates": int(state.skipped),
    "iterations": final_step,
    "lr": exported.lr,
    "ema_decay": plan.ema_decay,
    "set_statistics": analysis.set_statistics(
      reported, images_per_class=plan.images_per_class
    ),
    "results": results,
  }
  workdir_lib.write_json(workdir / "results.json", summary)
  if process_0:
    analysis.save_metrics_plot(workdir / "metrics.png", writer.read())
  for name, r in results.items():
    line = (
      f"{name}: {100 * r['mean']:.2f} ± {100 * r['std']:.2f} "
      f"over {len(r['accuracies'])} models"
    )
    if process_0:
      print(line, flush=True)
    logging.info("%s", line)
  if process_0:
    print(f"artifacts in {workdir.resolve()}", flush=True)
  return summary
