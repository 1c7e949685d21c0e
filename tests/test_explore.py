"""The latent space of a trained run (issue 14): slerp and the principal components with
known answers, and encode, interpolate and variations on a tiny trained run."""

import numpy as np
import pytest

import music_generator as mg
from music_vae.explore import PrincipalComponents, slerp, variations
from music_vae.latent import LatentDensity, encode
from music_vae.model import keras
from music_vae.samples import midi_to_song, song_to_midi
from music_vae.songs import decode
from test_music_generator import make_samples, train


def test_slerp_starts_and_ends_at_its_ends_and_keeps_to_the_sphere_between():
    start, end = np.array([2.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    path = slerp(start, end, np.linspace(0, 1, 5))
    assert path[0] == pytest.approx(start) and path[-1] == pytest.approx(end)
    assert np.linalg.norm(path, axis=1) == pytest.approx(np.full(5, 2.0))  # a straight line dips to 1.41
    assert path[2] == pytest.approx([np.sqrt(2), np.sqrt(2), 0.0])
    assert slerp(start, 3 * start, [0.5])[0] == pytest.approx(2 * start)  # parallel: the straight line


def test_principal_components_find_the_codes_axes_and_their_spread():
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.standard_normal((6, 6)))[0][:2]  # two orthonormal directions in 6 dimensions
    weights = rng.standard_normal((400, 2))
    weights -= weights.mean(axis=0)
    weights = weights @ np.linalg.inv(np.linalg.cholesky(np.cov(weights, rowvar=False))).T  # exactly uncorrelated
    codes = 5.0 + (weights * [3.0, 1.0]) @ axes
    components = PrincipalComponents.fit(codes, 4)
    assert components.deviations[:2] == pytest.approx([3.0, 1.0], rel=1e-5)
    assert components.deviations[2:] == pytest.approx([0, 0], abs=1e-5)
    assert abs(components.axes[:2] @ axes.T) == pytest.approx(np.eye(2), abs=1e-5)  # the same axes, either sign
    assert components.mean == pytest.approx(np.full(6, 5.0), abs=1e-5)
    positions = components.positions(codes[:3])[:, :2]
    assert components.latents(np.pad(positions, ((0, 0), (0, 2)))) == pytest.approx(codes[:3], abs=1e-4)
    assert components.latents(np.zeros((1, 4)))[0] == pytest.approx(components.mean)


def test_variations_follow_the_seed_and_the_densitys_spread():
    density = LatentDensity(np.zeros(3, np.float32), np.diag([1.0, 0.0, 2.0]).astype(np.float32))
    center = np.array([1.0, 1.0, 1.0], np.float32)
    first = variations(center, density, 500, 0.5, seed=7)
    assert np.array_equal(first, variations(center, density, 500, 0.5, seed=7))
    assert not np.array_equal(first, variations(center, density, 500, 0.5, seed=8))
    assert first.std(axis=0) == pytest.approx([0.5, 0.0, 1.0], rel=0.1, abs=1e-6)
    assert first.mean(axis=0) == pytest.approx(center, abs=0.1)


@pytest.fixture(scope="module")
def run_and_songs(tmp_path_factory):
    """A tiny trained run, and two of its training songs as MIDI files."""
    folder = tmp_path_factory.mktemp("explore")
    samples = make_samples(folder / "samples", 8)
    # A code the decoder listens to: a light KL term, and a quick learning rate.
    options = ["--kl-weight", "0.01", "--kl-cycle", "0", "--free-bits", "0", "--lr", "0.01", "--batch-size", "2"]
    code, run = train(folder, *options, "--songs", "0", "--songs-per-epoch", "0", "--no-audio", data=samples, epochs=3)
    assert code == 0
    midi = []
    for number in range(2):
        path = folder / f"song{number}.mid"
        song_to_midi(np.load(samples / f"song00{number}.npy"), path, lowest_pitch=16)
        midi.append(path)
    return run, midi


def test_encode_saves_each_files_latent_mean(run_and_songs, tmp_path, capsys):
    run, midi = run_and_songs
    assert mg.main(["encode", "--run", str(run), *map(str, midi), "--output-dir", str(tmp_path)]) == 0
    encoder = keras.saving.load_model(run / "model" / "encoder.keras")
    expected, _ = encode(encoder, [midi_to_song(path) for path in midi])
    for path, z_mean in zip(midi, expected):
        assert np.load(tmp_path / f"{path.stem}.npy") == pytest.approx(z_mean)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "notes in measures 1-16" in lines[0]


def test_interpolation_ends_at_the_reconstructions_of_its_two_songs(run_and_songs, tmp_path):
    run, (start, end) = run_and_songs
    argv = ["interpolate", "--run", str(run), "--from", str(start), "--to", str(end), "--steps", "5"]
    assert mg.main([*argv, "--output-dir", str(tmp_path), "--no-audio"]) == 0
    songs = [np.load(tmp_path / "npy" / f"interpolation_song{number:02d}.npy") for number in range(1, 6)]
    encoder = keras.saving.load_model(run / "model" / "encoder.keras")
    decoder = keras.saving.load_model(run / "model" / "decoder.keras")
    z_mean, _ = encode(encoder, [midi_to_song(start), midi_to_song(end)])
    reconstructions = decode(decoder, z_mean)
    assert songs[0] == pytest.approx(reconstructions[0], abs=1e-6)
    assert songs[-1] == pytest.approx(reconstructions[1], abs=1e-6)
    assert np.abs(songs[1] - songs[0]).max() > 1e-4  # the decoder tells the points apart
    assert len(list((tmp_path / "midi").glob("interpolation_song*.mid"))) == 5


def test_the_same_seed_gives_the_same_variations(run_and_songs, tmp_path):
    run, (song, _) = run_and_songs

    def vary(folder, seed):
        argv = ["variations", "--run", str(run), str(song), "--songs", "3", "--seed", str(seed), "--spread", "2"]
        assert mg.main([*argv, "--output-dir", str(folder), "--no-audio"]) == 0
        return [np.load(folder / "npy" / f"variation_song{number:02d}.npy") for number in (1, 2, 3)]

    first = vary(tmp_path / "a", 3)
    assert all(np.array_equal(ours, theirs) for ours, theirs in zip(first, vary(tmp_path / "b", 3)))
    assert not np.array_equal(first[0], vary(tmp_path / "c", 4)[0])


def test_latent_command_mistakes_get_one_line_and_exit_code_2(run_and_songs, tmp_path, capsys):
    run, (song, _) = run_and_songs
    (tmp_path / "noise.mid").write_bytes(np.random.default_rng(0).bytes(300))
    cases = [
        (["encode", "--run", str(tmp_path), str(song)], "is not a run folder made by train"),
        (["encode", "--run", str(run), str(tmp_path / "missing.mid")], "missing.mid does not exist"),
        (["encode", "--run", str(run), str(tmp_path / "noise.mid")], "noise.mid is not a readable MIDI file"),
        (["encode", "--run", str(run), str(song), "--measure", "40"], "has no notes in measures 40-55"),
        (["interpolate", "--run", str(run), "--from", str(song), "--to", str(song), "--steps", "1"], "--steps"),
        (["variations", "--run", str(run), str(song), "--spread", "0"], "argument --spread: must be more than 0"),
    ]
    for argv, message in cases:
        try:
            code = mg.main(argv)
        except SystemExit as exit:  # argparse's own mistakes
            code = exit.code
        error = capsys.readouterr().err.strip()
        assert code == 2 and message in error and len(error.splitlines()) == 1, (argv, error)
