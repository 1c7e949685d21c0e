"""The explore page: a local web server over a run's decoder, where sliders move a song
along the principal components of the encoded training songs and the browser draws and
plays it (the paper's outlook, its section 5.4; HackerPoet's Composer has such a tool).

Where the run has mood directions (moods.py), one slider more for each moves the song along it.

The standard library's threaded server is enough for one person at one page. It answers
fixed routes only, so no request reaches a file; a bad request gets a 4xx and one log line.
"""

import http.server
import io
import json
import math
import threading
from pathlib import Path

import jinja2
import numpy as np

from music_vae.audio import Synthesizer, wav_bytes
from music_vae.files import UsageError
from music_vae.latent import encode
from music_vae.music_metrics import onset_scores
from music_vae.samples import PITCHES, STEPS_PER_MEASURE, SkipFile, midi_to_song, song_seconds, song_to_midi
from music_vae.songs import NoteRule, decode

SLIDERS = 40  # as HackerPoet's Composer: past 40, a component moves a song too little to hear
SLIDER_RANGE = 3.0  # standard deviations either way
MAX_JSON_BYTES = 64 * 1024
MAX_MIDI_BYTES = 4 * 1024 * 1024
TEMPLATE = Path(__file__).with_name("templates") / "explore.html"


class BadRequest(Exception):
    """A request the page would never send: its answer is a 4xx with this message."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class Explorer:
    """A run's decoder behind the page: slider positions in, songs out.

    Parameters
    ----------
    decoder, encoder : keras.Model
        The run's; the encoder places an uploaded MIDI file.
    components : PrincipalComponents
        Of the encoded training songs: the sliders' axes.
    density : LatentDensity
        Where the run's songs come from: "random" draws from it.
    rule : NoteRule
        The run's note rule, used where the page sets no threshold.
    settings : DataSettings
        Of the run's samples: pitch window and measures.
    bpm : float
        The run's tempo, the page's starting one.
    name : str
        The run's, for the page's title.
    directions : dict, optional
        {name: moods.Direction}: the run's mood directions, a slider each after the components'.
    """

    def __init__(self, decoder, encoder, components, density, rule, settings, bpm, name="a run", directions=None):
        self.decoder, self.encoder, self.components, self.density = decoder, encoder, components, density
        self.rule, self.settings, self.bpm, self.name = rule, settings, bpm, name
        self.directions = dict(directions or {})
        # The sliders' axes and units, the components' then the directions', as the page's sliderLatent has them.
        self.axes = np.vstack([components.axes, *[direction.unit[None] for direction in self.directions.values()]])
        self.units = np.concatenate([components.deviations, [d.deviation for d in self.directions.values()]])
        self.rng = np.random.default_rng()
        self.lock = threading.Lock()  # one decode at a time: Keras models are not made for concurrent calls

    def song(self, positions, threshold=None):
        """The song at slider ``positions`` (the components', then the directions', which may
        be left out: 0): its notes (measures, 9216, 0/1 uint8) by the run's rule, or those at
        or above ``threshold``."""
        return self.song_of(self.latent(positions)[None], threshold)

    def latent(self, positions):
        """The latent vector (latent,) float32 of slider ``positions``: the mean, plus each
        position times its unit along its axis, summed in float64 and rounded once, as the
        exported page sums them, so that both decode the same vector."""
        weights = np.zeros(len(self.units))
        weights[: len(positions)] = np.asarray(positions, np.float64) * self.units[: len(positions)]
        return (np.float64(self.components.mean) + weights @ np.float64(self.axes)).astype(np.float32)

    def song_of(self, latents, threshold=None):
        """The notes of the song of ``latents`` (1, latent), as ``song`` picks them."""
        with self.lock:
            values = decode(self.decoder, latents)[0]
        rule = self.rule if threshold is None else NoteRule(threshold=threshold)
        kept, passing = rule.apply(values)
        return (kept >= passing).astype(np.uint8)

    def notes(self, song):
        """The notes of ``song`` as [[step from the song's start, MIDI pitch], ...]."""
        measures, pitches, steps = np.nonzero(np.asarray(song).reshape(-1, PITCHES, STEPS_PER_MEASURE))
        starts = measures * STEPS_PER_MEASURE + steps
        order = np.lexsort((pitches, starts))
        return [[int(starts[i]), int(pitches[i]) + self.settings.lowest_pitch] for i in order]

    def random_positions(self):
        """Slider positions of a song drawn from the run's density, clipped to the sliders (the
        components' alone: the mood sliders stay where they are)."""
        latent = self.density.latents(self.rng.standard_normal((1, len(self.density.mean))))
        return np.clip(self.components.positions(latent)[0], -SLIDER_RANGE, SLIDER_RANGE)

    def positions_of_midi(self, data):
        """Slider positions of the first measures of a MIDI file's bytes, and how much of
        those measures' notes the song there keeps: (positions, its F1, and the F1 of the
        song of the file's whole code, which the sliders lose where it lies off their axes)."""
        try:
            song = midi_to_song(data, self.settings)
        except SkipFile as error:
            raise BadRequest(f"not a readable MIDI file: {error}") from None
        if not song.any():
            raise BadRequest(f"the MIDI file has no notes in its first {self.settings.measures} measures")
        with self.lock:
            z_mean, _ = encode(self.encoder, [song])
        positions = np.clip(self.components.positions(z_mean)[0], -SLIDER_RANGE, SLIDER_RANGE)
        kept = onset_scores(song, self.song(positions))["f1"]
        return positions, kept, onset_scores(song, self.song_of(z_mean))["f1"]

    def midi(self, song, bpm):
        """``song`` as the bytes of a MIDI file at ``bpm``."""
        buffer = io.BytesIO()
        song_to_midi(song, bpm=bpm, lowest_pitch=self.settings.lowest_pitch).write(buffer)
        return buffer.getvalue()

    def wav(self, song, bpm, synthesizer):
        """``song`` as the bytes of a WAV file at ``bpm``, played by ``synthesizer``."""
        midi = song_to_midi(song, bpm=bpm, lowest_pitch=self.settings.lowest_pitch)
        with self.lock:  # FluidSynth plays one song at a time
            audio = synthesizer.render(midi, song_seconds(len(song), bpm))
        return wav_bytes(audio, synthesizer.sample_rate)

    def page_settings(self):
        """What the page needs to know: the sliders, the song's size, the tempo."""
        return {
            "run": self.name, "sliders": len(self.components.deviations), "moods": list(self.directions),
            "range": SLIDER_RANGE,
            "measures": self.settings.measures, "steps_per_measure": STEPS_PER_MEASURE,
            "lowest_pitch": self.settings.lowest_pitch, "pitches": PITCHES, "bpm": self.bpm,
        }


class Handler(http.server.BaseHTTPRequestHandler):
    """The page's routes. GET /: the page, its settings in it. POST, with a JSON
    body {"positions": [...], "threshold": null or a value, "bpm": ...}: /song (its notes),
    /midi and /wav (its files); POST /random: positions from the run's density; POST
    /encode, with a MIDI file as the body: the positions of its song."""

    server_version = "music_vae-explore"
    explorer = None  # set by serve(): an Explorer
    synthesizer = None
    page = b""

    def do_GET(self):
        self.answer({"/": lambda: (self.page, "text/html; charset=utf-8")})

    def do_POST(self):
        routes = {"/song": self.song, "/midi": self.midi, "/wav": self.wav, "/random": self.random,
                  "/encode": self.encode}
        self.answer(routes)

    def answer(self, routes):
        try:
            route = routes.get(self.path.split("?")[0])
            if route is None:
                raise BadRequest(f"no such page: {self.path[:80]}", 404)
            body, kind = route()
            self.send(200, body, kind)
        # The log line before the answer: a client that has its answer finds the line written.
        except BadRequest as error:
            self.log_message("%s %s: %d %s", self.command, self.path[:80], error.status, error)
            self.send(error.status, *as_json({"error": str(error)}))
        except Exception as error:  # noqa: BLE001 - the server stays up; one line says what failed
            self.log_message("%s %s: 500 %s: %s", self.command, self.path[:80], type(error).__name__, error)
            self.send(500, *as_json({"error": "the server failed"}))

    def send(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code="-", size="-"):  # only what went wrong is logged
        pass

    def body(self, limit):
        """The request's body, of at most ``limit`` bytes."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise BadRequest("a body needs its Content-Length", 411)
        if int(length) > limit:
            raise BadRequest(f"the body is over {limit:,} bytes", 413)
        return self.rfile.read(int(length))

    def request_song(self):
        """The song the JSON body asks for, and its tempo."""
        try:
            asked = json.loads(self.body(MAX_JSON_BYTES))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadRequest("the body is not JSON") from None
        if not isinstance(asked, dict):
            raise BadRequest("the body is not a JSON object")
        sliders = len(self.explorer.units)
        positions = asked.get("positions")
        if not (isinstance(positions, list) and len(positions) == sliders and all(map(is_number, positions))):
            raise BadRequest(f"positions must be a list of {sliders} numbers")
        if max(map(abs, positions), default=0) > 10 * SLIDER_RANGE:
            raise BadRequest(f"positions must lie within {10 * SLIDER_RANGE:g} standard deviations")
        threshold = asked.get("threshold")
        if threshold is not None and not (is_number(threshold) and 0 < threshold <= 1):
            raise BadRequest("threshold must be null or a number in (0, 1]")
        bpm = asked.get("bpm", self.explorer.bpm)
        if not (is_number(bpm) and 20 <= bpm <= 400):
            raise BadRequest("bpm must be a number from 20 to 400")
        return self.explorer.song(positions, threshold), float(bpm)

    def song(self):
        song, _ = self.request_song()
        return as_json({"notes": self.explorer.notes(song)})

    def midi(self):
        song, bpm = self.request_song()
        return self.explorer.midi(song, bpm), "audio/midi"

    def wav(self):
        song, bpm = self.request_song()
        return self.explorer.wav(song, bpm, self.synthesizer), "audio/wav"

    def random(self):
        return as_json({"positions": self.explorer.random_positions().tolist()})

    def encode(self):
        positions, kept, whole = self.explorer.positions_of_midi(self.body(MAX_MIDI_BYTES))
        return as_json({"positions": positions.tolist(), "kept_f1": kept, "code_f1": whole})


def as_json(value):
    """``value`` as an answer's body and content type."""
    return json.dumps(value).encode(), "application/json"


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def make_server(explorer, host="127.0.0.1", port=8000, synthesizer=None):
    """A threaded HTTP server of the page for ``explorer`` at ``host``:``port`` (0: any free
    port), not yet serving."""
    template = jinja2.Template(TEMPLATE.read_text(encoding="utf-8"), autoescape=True)
    page = template.render(settings=explorer.page_settings())
    handler = type("ExploreHandler", (Handler,), {
        "explorer": explorer, "synthesizer": synthesizer or Synthesizer.best(), "page": page.encode(),
    })
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise UsageError(f"cannot serve at {host}:{port}: {error.strerror or error}") from None
