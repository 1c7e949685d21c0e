"""The train command: one session of a run, from its last recorded epoch to its final songs
and their evaluation, whatever stops it recorded in its state.

A new run, or one resumed with ``--resume``, runs the same way: its data are read and split,
its model built (or loaded as its last recorded epoch left it), and ``fit`` trains the
remaining epochs, EpochEnd recording each one (models, songs, state, page). Then the final
songs are written and judged. Ctrl-C, a kill, a crash or a full disk leave a run that
``--resume`` continues as if it had not stopped (see RunFolder.recover).
"""

import contextlib
import dataclasses
import math
import sys

from music_vae.audio import note_sine_waves, song_synthesizer
from music_vae.backend import keras
from music_vae.callbacks import (
    CtrlC, EpochEnd, KLSchedule, NonFiniteStop, ProgressBar, Speedometer, StepsAhead, TensorBoardLog,
)
from music_vae.config import TrainConfig
from music_vae.dataset import EpochOrder, SongFiles, cache_fits, following_samples, read_data, read_sample, subset
from music_vae.distribute import LocalCopy, Processes, choose_devices, undistributed
from music_vae.evaluation import evaluate_songs, evaluation_table, write_evaluation
from music_vae.files import UsageError, quiet_stderr
from music_vae.latent import fit_density
from music_vae.model import FusedAdam, ModelConfig, build_vae, default_jit, precision
from music_vae.peak_speed import peak_flops, training_flops_per_sample
from music_vae.run_folder import RunFolder, data_settings, environment, now
from music_vae.run_page import write_run_page
from music_vae.songs import NoteRule, SongStyle, fitted_rule, fixed_noise, write_songs

REBUILT_SONGS = 64  # training songs, and as many validation songs, reconstructed after every epoch


def train(given, resume=None):
    """The train command: a new run with the options ``given`` (a dict of TrainConfig's
    fields; None: not given), or, where ``resume`` names a stopped run's folder, that run
    continued. Returns the exit code. Where several processes train a run
    (distribute.py), each calls it; the first alone writes the run folder, the others
    only train."""
    processes = Processes.of_environment()
    with contextlib.ExitStack() as cleanup:
        run = state = None
        if resume:
            run = RunFolder.open(resume, trained=False)
            if processes.writes:
                cleanup.enter_context(run.training())  # before its state is read: no other process changes it now
            state = run.load_state()
            config = resumed_config(run, state, given, say_notes=processes.writes)
            if processes.writes:
                run.recover(state["epochs_done"])
        else:
            config = new_config(given)
        cleanup.enter_context(precision(config.precision))
        with quiet_stderr():  # Keras seeds TensorFlow too where it is installed, which logs lines as it starts
            keras.utils.set_random_seed(config.seed)
        devices = choose_devices(config.distribute, config.devices, processes)  # joins the processes, before computing
        cleanup.callback(keras.distribution.set_distribution, None)
        check_batches(config.batch_size, devices.count)
        processes.wait_for_all("recovered")  # the others load the model that the first has put back
        synthesizer = song_synthesizer(config.audio, config.soundfont) if processes.writes else None
        data = read_data(
            config.data, config.validation_split, config.seed, data_settings(state) if state else None,
            config.test_split,
        )
        if len(data.training) < devices.count:
            raise UsageError(f"{len(data.training)} training samples cannot be spread over {devices.count} devices")
        jit = default_jit() if config.jit is None else config.jit
        with devices.scope():
            vae = model_to_train(run, state, config, data, jit)
        devices.prepare(vae)
        cache = config.cache and cache_fits(len(data.training) + len(data.validation), data.settings.shape)
        if config.cache and not cache:
            note = "the samples would take more than half of this machine's memory; reading them from disk"
            print(f"note: --cache: {note}", file=sys.stderr)
        training, validation = song_batches(config, data, cache, devices)
        kl_schedule = KLSchedule(config.kl_warmup, config.kl_cycle) if config.kl_warmup or config.kl_cycle else None
        if not processes.writes:
            return train_along(vae, training, validation, config, state["epochs_done"] if state else 0, kl_schedule)
        dtype, rows = keras.mixed_precision.global_policy().compute_dtype, config.batch_size * data.settings.measures
        flops, peak = training_flops_per_sample(vae), peak_flops(dtype, rows=[rows])

        if run is None:  # made only now, so that a stop while the model and the data get ready leaves no folder
            run = RunFolder.create(config.output_dir, config.run_name)
            cleanup.enter_context(run.training())
            cleanup.callback(run.remove_unless_saved)
            state = new_state(run, config)
        state.update(
            data=data.summary(),
            model={
                "parameters": vae.count_params(), "encoder": vae.encoder.count_params(),
                "decoder": vae.decoder.count_params(),
            },
            speed={
                "jit": jit, "cache": cache, "cache_on_device": training.device_bank is not None,
                "gflop_per_sample": flops / 1e9, "peak_gflop_per_s": peak / 1e9,
            },
            devices=devices.summary(),
            environment=environment(),
            audio=str(synthesizer) if synthesizer else "none (--no-audio)",
            status="training",
        )
        state["sessions"].append({"started": now(), "from_epoch": state["epochs_done"]})
        run.save(state)

        rule = NoteRule.of_run(config, data.mean_notes)
        style = SongStyle(rule, config.bpm, data.settings.lowest_pitch, synthesizer)
        tensorboard = TensorBoardLog.create(run.logs, config.log_every)
        models = LocalCopy(vae, processes)
        epoch_end = EpochEnd(
            run, state, fixed_noise(config.songs_per_epoch, config.latent, config.seed), style, tensorboard,
            density_paths=data.training if config.sample_from == "data" else None, temperature=config.temperature,
            seed=config.seed, models=models, rebuilt=rebuilt_songs(data, config.seed),
        )
        speedometer = Speedometer(len(data.training), config.batch_size, flops, peak * devices.count)
        progress = ProgressBar()  # after the Speedometer, whose figures it shows; before EpochEnd, which speaks
        callbacks = [
            StepsAhead(), EpochOrder(training), NonFiniteStop(), kl_schedule, speedometer, progress, tensorboard,
            epoch_end,
        ]
        if state["epochs_done"] < config.epochs:
            epochs = f"epochs {state['epochs_done'] + 1}-{config.epochs}"
        else:
            epochs = f"its {config.epochs} epochs are done: the final songs and the evaluation follow"
        print(
            f"Run {run.path}: {len(data.training)} training, {len(data.validation)} validation and "
            f"{len(data.test)} test samples, "
            f"{state['model']['parameters']:,} parameters, {epochs}; "
            f"{config.precision}{', XLA' if jit else ''}{', cached' if cache else ''}, peak {peak / 1e9:,.0f} GFLOP/s"
        )
        note_sine_waves(synthesizer)
        try:
            if state["epochs_done"] < config.epochs:
                with CtrlC() as ctrl_c:
                    vae.fit(
                        training,
                        validation_data=validation,
                        epochs=config.epochs,
                        initial_epoch=state["epochs_done"],
                        # SongFiles shuffles, from the seed and the epoch; Keras' own shuffle of
                        # the batches draws from Python's global random state, which a resumed
                        # run starts afresh.
                        shuffle=False,
                        callbacks=[c for c in (*callbacks, ctrl_c) if c],
                        verbose=1 if sys.stdout.isatty() else 2,
                    )
                if ctrl_c.pressed:  # after the last batch: still a request to stop
                    raise KeyboardInterrupt
            if epoch_end.stopped:
                finish(run, state, f"stopped: {epoch_end.stopped}")
                print(
                    f"music_generator.py: error: training stopped: {epoch_end.stopped}; the model of epoch "
                    f"{state['epochs_done']} is kept in {run.model}. Try a lower --lr.",
                    file=sys.stderr,
                )
                return 1
            with undistributed():
                written = final_songs(run, state, models.update(), config, data, style, tensorboard)
        except KeyboardInterrupt:
            progress.end_line()
            finish(run, state, f"interrupted after epoch {state['epochs_done']}")
            resume_command = f"python music_generator.py train --resume {run.path}"
            if state["epochs_done"] < config.epochs:
                print(f"Interrupted. Continue with: {resume_command}", file=sys.stderr)
            else:
                print(
                    f"Interrupted before the final songs and evaluation; write them with: {resume_command}",
                    file=sys.stderr,
                )
            return 130
        except Exception as error:
            progress.end_line()
            with contextlib.suppress(OSError):  # with a full disk, even this may fail
                finish(run, state, f"failed after epoch {state['epochs_done']}: {type(error).__name__}")
            if isinstance(error, OSError):  # a full disk: everything recorded so far is intact
                where = f" ({error.filename})" if error.filename else ""
                then = f"when fixed, continue with: python music_generator.py train --resume {run.path}"
                raise OSError(error.errno, f"{error.strerror or error}{where}; {then}") from error
            raise
        finish(run, state, "finished")
    print(f"Done: {run.path}")
    summary = f"{len(written)} final songs, and {config.songs_per_epoch} per epoch"
    print(f"  songs:       {run.generated / 'midi'} ({summary})")
    print(f"  page:        {run.page} (open it in a browser: songs to see and hear)")
    print(f"  info:        {run.info}")
    print(f"  TensorBoard: tensorboard --logdir {run.logs}")
    return 0


def song_batches(config, data, cache, devices):
    """The training and validation SongFiles of a run (validation None where there are fewer
    samples than devices), each serving this process its part of every batch."""
    processes = devices.processes
    batches = dict(
        batch_size=config.batch_size, shape=data.settings.shape, cache=cache, devices=devices.count,
        processes=(processes.count, processes.index),
    )
    following = None
    if config.random_start:
        following = following_samples(data.training, data.folder, data.settings.measures)
    # With JAX on one device, the cached samples live on it and each step gathers its own batch
    # there (see SongFiles); TensorFlow's reader would copy the whole cache every step.
    cached_bytes = (len(data.training) + len(data.validation)) * math.prod(data.settings.shape) // 8
    batches["on_device"] = cache and keras.backend.backend() == "jax" and devices.holds(cached_bytes)
    training = SongFiles(
        data.training, shuffle=True, seed=config.seed, transpose=config.transpose, following=following, **batches
    )
    validation = SongFiles(data.validation, **batches) if len(data.validation) >= devices.count else None
    return training, validation


def rebuilt_songs(data, seed):
    """The songs whose reconstructions are scored after every epoch: {"f1": up to
    REBUILT_SONGS training samples, "val_f1": as many validation samples}."""
    return {
        key: [read_sample(path) for path in subset(paths, REBUILT_SONGS, seed)]
        for key, paths in (("f1", data.training), ("val_f1", data.validation))
    }


def train_along(vae, training, validation, config, first_epoch, kl_schedule):
    """Train as a process other than the first: the same steps, with nothing written or
    said. Returns the exit code."""
    callbacks = [StepsAhead(), EpochOrder(training), NonFiniteStop(), kl_schedule]
    if first_epoch < config.epochs:
        vae.fit(
            training, validation_data=validation, epochs=config.epochs, initial_epoch=first_epoch, shuffle=False,
            callbacks=[c for c in callbacks if c], verbose=0,
        )
    return 0


def new_config(given):
    """The TrainConfig of a new run with the options ``given``, checked."""
    if not given.get("data"):
        raise UsageError("the samples folder is missing: pass --data SAMPLES_DIR (or --resume RUN_DIR)")
    config = TrainConfig.new(given)
    if config.kl_cycle == 1:
        raise UsageError("--kl-cycle 1 would keep the KL weight at 0: it rises over a cycle's first half, so 2 or more")
    RunFolder.check_new(config.output_dir, config.run_name)  # before minutes of reading data, not after
    return config


def resumed_config(run, state, given, say_notes=True):
    """The TrainConfig of a run to resume: the run's own, with those of the options
    ``given`` that may change (see TrainConfig.resumed); a note says each (where
    ``say_notes``). ``state`` records the changes."""
    config, notes = TrainConfig.of_run(state["parameters"]).resumed(given)
    done = state["epochs_done"]
    if config.epochs < done:
        raise UsageError(f"{run.path} has done {done} epochs already; --epochs cannot take them back")
    # A run that did its epochs but was stopped before it finished still owes its final
    # songs and evaluation: resuming it writes them.
    if done >= config.epochs and state["status"] == "finished":
        raise UsageError(f"{run.path} has done its {config.epochs} epochs; pass --epochs N to train it longer")
    for note in notes if say_notes else ():
        print(note, file=sys.stderr)
    state["parameters"] = {**state["parameters"], **config.parameters()}  # options since removed, kept on record
    return config


def new_state(run, config):
    """The state of a new run: its parameters, and no epoch done."""
    return {
        "run": run.path.name, "run_info": config.run_info, "parameters": config.parameters(),
        "status": "training", "epochs_done": 0, "sessions": [], "history": [],
    }


def check_batches(batch_size, devices):
    """Raise UsageError where batches of ``batch_size`` cannot be spread over ``devices``;
    say where each batch loses some (see SongFiles)."""
    if batch_size < devices:
        raise UsageError(
            f"{batch_size} samples a batch cannot be spread over {devices} devices: "
            f"pass a --batch-size of {devices} or more (a multiple of {devices}), or fewer --devices"
        )
    if batch_size % devices:
        print(
            f"note: --batch-size {batch_size} is not a multiple of the {devices} devices: each batch leaves out "
            f"{batch_size % devices} of its samples, a different few every epoch",
            file=sys.stderr,
        )


def model_to_train(run, state, config, data, jit):
    """The compiled VAE to train: the run's, as its last recorded epoch left it, or a new one
    for a new run (``run`` None) and for a run stopped before its first epoch ended."""
    if state and state["epochs_done"] > 0:
        if not (run.model / "vae.keras").is_file():
            raise UsageError(f"{run.path} has no model/vae.keras to continue from")
        vae = keras.saving.load_model(run.model / "vae.keras")
        optimizer = vae.optimizer
    else:
        if state:
            print(f"note: no epoch of {run.path.name} had completed; it starts again from epoch 1", file=sys.stderr)
        note_density = data.mean_notes / math.prod(data.settings.shape)
        vae = build_vae(model_config(config, data.settings.measures), note_density=note_density)
        optimizer = FusedAdam(learning_rate=config.lr)
    getattr(optimizer, "inner_optimizer", optimizer).fuse = not jit  # inside float16's loss scaling
    vae.compile(optimizer=optimizer, jit_compile=jit)
    return vae


def model_config(config, measures):
    """The ModelConfig of a run's ``config`` (its TrainConfig), for songs of ``measures`` measures."""
    names = [field.name for field in dataclasses.fields(ModelConfig) if field.name != "measures"]
    return ModelConfig(measures=measures, **{name: getattr(config, name) for name in names})


def final_songs(run, state, vae, config, data, style, tensorboard):
    """Write the run's final songs and evaluate them against the data (into the run
    folder, its state and TensorBoard); return the WrittenSongs. ``vae``: what has its
    ``encoder`` and ``decoder``."""
    fit = lambda: fit_density(vae.encoder, data.training, config.seed)  # noqa: E731
    density = run.latent_density(config.sample_from, config.latent, fit)
    rule = fitted_rule(style.rule, vae.decoder, density, config.temperature, config.seed)
    style = dataclasses.replace(style, rule=rule)
    latents = density.latents(fixed_noise(config.songs, config.latent, config.seed + 1), config.temperature)
    written = write_songs(vae.decoder, latents, run.generated, "final", style)
    if written:
        song_paths = [run.generated / "midi" / f"{song.name}.mid" for song in written]
        results = evaluate_songs(
            vae.encoder, vae.decoder, song_paths, data_paths=data.training + data.validation + data.test,
            held_out=data.test or data.validation, training=data.training, rule=style.rule, settings=data.settings,
            seed=config.seed, data_folder=data.folder,
        )
        results["compared"]["data_folder"] = data.folder
        state["evaluation"], image = write_evaluation(run.path, results)
        if tensorboard:
            tensorboard.evaluation(results, image, state["epochs_done"])
        print("Evaluation: " + evaluation_table(results))
    return written


def finish(run, state, status):
    """Record the end of a session: the page first, state.json last, so that a kill between
    the two leaves the run to be finished by --resume."""
    state["status"] = status
    state["sessions"][-1]["ended"] = now()
    write_run_page(run, state)
    run.save(state)
