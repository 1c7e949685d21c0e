"""The commands that work on a finished run, as functions of plain arguments: generate,
moods, evaluate, encode, reconstruct, interpolate, variations, explore and export (train is
in training.py). Each returns the exit code and raises UsageError for a user's mistake;
music_generator.py turns its command line into one call of them.

The commands that write songs take ``song_options`` (a dict of TrainConfig's song options
given in place of the run's; None: not given) and ``synthesizer`` (what renders their WAV
files, or None for none), and write into ``output_dir``, by default the run's ``generated/``
folder, whose songs the run page shows.
"""

from pathlib import Path

import numpy as np

from music_vae import portable, web_runtime
from music_vae.backend import keras
from music_vae.config import TrainConfig
from music_vae.dataset import find_samples
from music_vae.evaluation import (
    EVALUATION_SAMPLES, evaluate_songs, evaluation_table, find_songs, reconstruction_text, write_evaluation,
)
from music_vae.evaluation import reconstruct as rebuild
from music_vae.explore_server import SLIDERS, Explorer, make_server
from music_vae.files import UsageError, atomic_write, npy_writer
from music_vae.latent_space import PrincipalComponents, encode_midi, latents_around, read_song, slerp
from music_vae.moods import (
    BOOTSTRAPS, MOODS_FILE, learn_directions, load_directions, read_labels, save_directions, steer, steered_base,
    steering_notes, steering_text,
)
from music_vae.music_metrics import onset_scores
from music_vae.run_folder import RunFolder, data_settings
from music_vae.run_page import write_run_page
from music_vae.songs import NoteRule, fixed_noise
from music_vae.trained_run import TrainedRun


def generate(
    run_dir, count=TrainConfig.songs, seed=None, output_dir=None, song_options=None, synthesizer=None, steering=None,
):
    """New songs from a run's decoder: ``count`` latent vectors drawn with ``seed`` (None: a
    new one, printed; the same seed gives the same songs), moved along the run's mood
    directions by ``steering`` ({name: standard deviations}), written as sample_songNN."""
    steering = steering or {}
    directions, report = {}, None
    if steering:  # a wrong name is said before the models load
        run = RunFolder.open(run_dir)
        directions, report = run_directions(run.path, run.load_state())
    notes = steering_notes(directions, report, steering, Path(run_dir).name)
    trained = TrainedRun(run_dir, song_options, synthesizer, output_dir)
    for note in notes:
        print(note)
    seed = new_seed() if seed is None else seed
    noise = fixed_noise(count, trained.decoder.input_shape[-1], seed)
    latents = steer(trained.density.latents(noise, trained.config.temperature), directions, steering)
    if trained.folder.resolve() == trained.run.generated.resolve():  # what the run page and info file say of them
        trained.state = trained.run.load_state()  # as it is now, not as it was when the models loaded
        trained.state["generate"] = {"songs": count, "seed": seed, "steering": steering}
        trained.run.save(trained.state)
    trained.remove_songs("sample", count)
    written = trained.write(latents, "sample")
    steered = f", steered {steering_text(steering)}" if steering else ""
    print(f"{len(written)} songs with seed {seed}{steered} in {trained.folder}: {song_list(written)}")
    return 0


def moods(run_dir, labels_csv, data=None, boots=BOOTSTRAPS):
    """Learn a run's mood directions from the labels of MIDI files (a CSV with a ``file``
    column and +1/-1 label columns; the files in ``data``, by default the CSV's folder), and
    measure how reliable each is; saved as RUN_DIR/moods.json, used by generate and explore."""
    files, labels = read_labels(labels_csv)
    trained = TrainedRun(run_dir)
    folder = Path(data) if data else Path(labels_csv).parent
    config = trained.config
    base = steered_base(trained.density, config.seed, config.temperature)
    directions, report = learn_directions(
        trained.encoder, trained.decoder, base, trained.style.rule, files, labels, folder, trained.settings,
        config.seed, boots,
    )
    report.update(
        labels=str(Path(labels_csv).resolve()), data=str(folder.resolve()), bootstraps=boots, songs=len(base),
        epochs_done=trained.state["epochs_done"],
    )
    save_directions(trained.run.path, report)
    state = trained.run.load_state()  # as it is now: the work above took minutes
    state["mood_directions"] = {name: values["moves"] for name, values in report["directions"].items()}
    trained.run.save(state)
    names = ", ".join(directions)
    print(f"Wrote {trained.run.path / MOODS_FILE}: generate --mood NAME=V, and explore, steer by {names}")
    return 0


def evaluate(run_dir, data=None, validation=None, midi_glob="final_*.mid", samples=EVALUATION_SAMPLES):
    """Judge a run's songs (the MIDI files matching ``midi_glob`` in its ``generated/midi``) and
    model against the data: the samples in ``data`` (default: the run's own) and the
    held-out ones in ``validation`` (default: the run's test split, else its validation
    split), at most ``samples`` of each. Writes RUN_DIR/evaluation.json and .png."""
    trained = TrainedRun(run_dir)
    run, state, config, settings = trained.run, trained.state, trained.config, trained.settings
    song_paths = find_songs(run.generated / "midi", midi_glob)
    folder = state["data"]["folder"]
    data_paths = find_samples(data, settings.shape)[0] if data else None
    held_out = find_samples(validation, settings.shape)[0] if validation else None
    training = None  # where the run's data folder is gone, the table says that no song was compared with them
    if data_paths is None or held_out is None or Path(folder).is_dir():  # the run's own data, split as in training
        own = trained.data(needed_for="pass --data SAMPLES_DIR and --validation SAMPLES_DIR (held-out samples)")
        data_paths = own.training + own.validation + own.test if data_paths is None else data_paths
        held_out = (own.test or own.validation) if held_out is None else held_out
        training = own.training
    results = evaluate_songs(
        trained.encoder, trained.decoder, song_paths, data_paths=data_paths, held_out=held_out, training=training,
        rule=trained.style.rule, settings=settings, samples=samples, seed=config.seed, data_folder=folder,
    )
    if not results["songs"]:
        raise UsageError(f"none of the {len(song_paths)} files that match {midi_glob!r} is a readable MIDI file")
    results["compared"]["data_folder"] = str(Path(data or folder).resolve())
    state["evaluation"], _ = write_evaluation(run.path, results)
    run.save(state)
    write_run_page(run, state)
    print(f"Evaluation of {run.path.name}: " + evaluation_table(results))
    print(f"Wrote {run.path / 'evaluation.json'} and {run.path / 'evaluation.png'}")
    return 0


def encode(run_dir, midi_paths, measure=1, output_dir=None):
    """Each MIDI file's latent mean (of its 16 measures from ``measure``, counted from 1),
    saved as NAME.npy in ``output_dir`` (default: RUN_DIR/encoded)."""
    run = RunFolder.open(run_dir)
    settings = data_settings(run.load_state())
    encoder = keras.saving.load_model(run.model / "encoder.keras")
    folder = Path(output_dir) if output_dir else run.path / "encoded"
    codes = [(path, *encode_midi(encoder, path, settings, measure - 1)) for path in midi_paths]
    folder.mkdir(parents=True, exist_ok=True)
    for path, z_mean, song in codes:
        target = folder / f"{Path(path).stem}.npy"
        atomic_write(target, npy_writer(z_mean))
        measures = f"{measure}-{measure + settings.measures - 1}"
        code = f"{len(z_mean)} numbers, norm {np.linalg.norm(z_mean):.2f}"
        print(f"{path}: {song.sum()} notes in measures {measures} -> {target} ({code})")
    return 0


def reconstruct(run_dir, midi_paths, measure=None, output_dir=None, song_options=None, synthesizer=None):
    """Each MIDI file's song as the run's model rebuilds it (its code decoded), saved as
    NAME_reconstruction beside NAME_original (the measures it was given: from ``measure``,
    or, where None, the file's first sample), with how much of the song the rebuild keeps."""
    settings = data_settings(RunFolder.open(run_dir).load_state())  # the files first: a mistake is said alone
    originals = [read_song(path, settings, None if measure is None else measure - 1) for path in midi_paths]
    trained = TrainedRun(run_dir, song_options, synthesizer, output_dir)
    values, notes = rebuild(trained.encoder, trained.decoder, originals, trained.style.rule)
    names = [Path(path).stem for path in midi_paths]
    trained.save(np.stack(originals), [f"{name}_original" for name in names], NoteRule(threshold=0.5))
    trained.save(values, [f"{name}_reconstruction" for name in names])
    for path, original, rebuilt in zip(midi_paths, originals, notes):
        print(f"{path}: {rebuilt.sum()} notes rebuilt of its {original.sum()}: {agreement(original, rebuilt)}")
    print(f"Wrote NAME_original and NAME_reconstruction in {trained.folder} for {', '.join(names)}")
    return 0


def interpolate(run_dir, start, end, steps=8, measure=1, output_dir=None, song_options=None, synthesizer=None):
    """Songs interpolation_songNN at ``steps`` points along the path between the latent
    means of MIDI files ``start`` and ``end`` (their reconstructions at the ends), and how
    much of each file its end keeps."""
    trained = TrainedRun(run_dir, song_options, synthesizer, output_dir)
    first_code, first = encode_midi(trained.encoder, start, trained.settings, measure - 1)
    last_code, last = encode_midi(trained.encoder, end, trained.settings, measure - 1)
    written = trained.write(slerp(first_code, last_code, np.linspace(0, 1, steps)), "interpolation")
    print(f"{len(written)} songs from {start} to {end} in {trained.folder}: {song_list(written)}")
    _, ends = rebuild(trained.encoder, trained.decoder, [first, last], trained.style.rule)
    for written_song, path, song, notes in zip((written[0], written[-1]), (start, end), (first, last), ends):
        print(f"  {written_song.name} against {path}: {agreement(song, notes)}")
    return 0


def variations(
    run_dir, midi_path, count=8, spread=0.25, seed=None, measure=1, output_dir=None, song_options=None,
    synthesizer=None,
):
    """``count`` songs variation_songNN around a MIDI file's latent mean: ``spread`` 1 is as
    far as the run's songs lie from their mean; ``seed`` None: a new one, printed."""
    trained = TrainedRun(run_dir, song_options, synthesizer, output_dir)
    center, _ = encode_midi(trained.encoder, midi_path, trained.settings, measure - 1)
    seed = new_seed() if seed is None else seed
    written = trained.write(latents_around(center, trained.density, count, spread, seed), "variation")
    print(f"{len(written)} variations of {midi_path} with seed {seed} in {trained.folder}: {song_list(written)}")
    return 0


def explore(run_dir, host="127.0.0.1", port=8000, sliders=SLIDERS):
    """Serve the explore page of a run at ``host``:``port`` (0: any free port) until Ctrl-C."""
    trained = TrainedRun(run_dir)
    server = make_server(run_explorer(trained, sliders), host, port)
    host, port = server.server_address[:2]
    print(f"Exploring {trained.run.path.name} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def run_explorer(trained, sliders=SLIDERS):
    """The Explorer of a TrainedRun, with ``sliders`` sliders (see slider_axes)."""
    return Explorer(
        trained.decoder, trained.encoder, slider_axes(trained, sliders), trained.density, trained.style.rule,
        trained.settings, trained.config.bpm, trained.run.path.name, sliders_directions(trained),
    )


def slider_axes(trained, sliders=SLIDERS):
    """The PrincipalComponents that ``sliders`` sliders move a TrainedRun's songs along: of the
    density of its encoded training songs (fitted and saved once, where the run has none)."""
    data = trained.run.latent_density("data", trained.decoder.input_shape[-1], trained.fit_density)
    return PrincipalComponents.of_density(data, sliders)


def export(run_dir, output_dir=None, weights="float32", sliders=SLIDERS):
    """Write a run's decoder as ONNX, its song space as JSON and its explore page as static
    files into one folder (default: RUN_DIR/export) that any static web server serves, and
    say how many notes the exported decoder changes against the run's own."""
    portable.need_export_libraries()
    trained = TrainedRun(run_dir)
    folder = Path(output_dir) if output_dir else trained.run.path / "export"
    portable.check_folder(folder)  # before the minutes of work below
    runtime = web_runtime.runtime_files()
    model = portable.with_weights(portable.decoder_onnx(trained.decoder), weights).SerializeToString()
    rule, config = trained.style.rule, trained.config
    changed = portable.notes_changed(model, trained.decoder, trained.density, rule, config.seed + 3)
    decoder_info = {"file": "decoder.onnx", "input": "z", "output": "song", "weights": weights, **changed}
    space = portable.song_space(
        trained.run.path.name, trained.state["parameters"], trained.settings, slider_axes(trained, sliders),
        trained.density, rule, config.bpm, decoder_info, sliders_directions(trained),
    )
    files = {
        "decoder.onnx": model, "song_space.json": portable.as_json(space),
        "index.html": portable.static_page(space).encode(),
        "README.txt": portable.readme(space, trained.run.path).encode(),
        portable.EXAMPLE.name: portable.EXAMPLE, **{path.name: path for path in runtime},
    }
    portable.write_folder(folder, files)
    print(
        f"Exported {trained.run.path.name} to {folder}: decoder.onnx {len(model) / 1e6:.1f} MB ({weights} weights; "
        f"{changed['notes_changed']:.2%} of the notes of {portable.AGREEMENT_SONGS} songs change against the "
        f"run's decoder), the page, its song space and onnxruntime-web {web_runtime.VERSION}"
    )
    print(f"Play it: python -m http.server --directory {folder} 8000, then open http://127.0.0.1:8000/")
    return 0


def run_directions(run_path, state):
    """The mood directions of a run folder with ``state``, and their report (see moods.load_directions)."""
    return load_directions(run_path, state["epochs_done"], state["parameters"]["latent"])


def sliders_directions(trained):
    """The mood directions a TrainedRun's explore page and export get a slider for: none, said
    in a note, where they were learned from older models or cannot be read."""
    try:
        return run_directions(trained.run.path, trained.state)[0]
    except UsageError as error:
        print(f"note: no mood sliders: {error}")
        return {}


def agreement(song, notes):
    """How far ``notes`` (a song's onsets) rebuild ``song``, in words: precision, recall and F1,
    exact and within a step."""
    exact, near = onset_scores(song, notes), onset_scores(song, notes, tolerance=1)
    return reconstruction_text({**exact, "within_1_step": near})


def song_list(written):
    """WrittenSongs as "name (N notes), ..."."""
    return ", ".join(f"{song.name} ({song.notes} notes)" for song in written)


def new_seed():
    """A seed for songs where none is given: drawn afresh, and printed, so that they can be made again."""
    return int(np.random.default_rng().integers(2**31))
