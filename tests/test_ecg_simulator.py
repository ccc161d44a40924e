"""The ECG simulator at every rate and rhythm the training draws: a template for every
rate and shape of the bank, however unevenly ECGSYN draws the R waves of a strip, the
same one from the same seed; records with beats at the rate asked for, the ectopy,
f-waves and baseline wander asked for, and the labels of their rhythm."""

from __future__ import annotations

import numpy as np
import pytest

from ai_models.training import ecg_simulator
from ai_models.training.ecg_simulator import SAMPLING_RATE, Template, TemplateBank
from core import ecg_filters

#: ``ai_models.training.train.ECG_QUICK_BANK``, the bank of ``train ecg-rhythm --quick``: rates,
#: shapes, ventricular shapes (repeated here so that this module does not import torch).
QUICK_RATES, QUICK_SHAPES, QUICK_PVC_SHAPES = (60, 120), 2, 1


def _check_template(template: Template, rate: float) -> None:
    rr = 60.0 / rate
    length, pre = round(rr * SAMPLING_RATE), round(0.45 * rr * SAMPLING_RATE)
    beat = template.beat
    assert beat.shape == (12, length) and template.r_index == pre
    assert np.isfinite(beat).all()
    # One cycle whose ends sit on the baseline, with lead I's R wave at r_index.
    assert np.abs(beat[:, [0, -1]]).max() < 0.1, beat[:, [0, -1]]
    assert abs(int(np.argmax(beat[0])) - pre) <= 2
    assert beat[0, pre] > 0.3
    assert np.ptp(beat, axis=1).min() > 0.1  # every lead has a beat in it


def _strip(rate: float, seconds: float, tall: dict[int, float] | None = None) -> np.ndarray:
    """A 12-lead strip of Gaussian R waves (1 mV, beat ``k`` ``tall[k]`` mV) and a
    T wave, one beat every 60/rate s from the start."""
    rr = 60.0 / rate
    t = np.arange(round(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    lead = np.zeros_like(t)
    for k, r in enumerate(np.arange(0.0, seconds, rr)):
        height = (tall or {}).get(k, 1.0)
        lead += height * np.exp(-0.5 * ((t - r) / 0.012) ** 2)
        lead += 0.2 * np.exp(-0.5 * ((t - r - 0.3 * rr) / 0.05) ** 2)
    gains = np.linspace(0.5, 1.5, 12)[:, None]
    return gains * lead[None, :]


def test_one_tall_r_wave_does_not_hide_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ECGSYN strip whose one R wave is three times as tall as the rest (as its
    integration gives at low rates) is cut at all its beats, not refused."""
    rate = 45.0
    monkeypatch.setattr(ecg_simulator, "_ecgsyn",
                        lambda rate, with_p, seed, duration=None, shape=None:
                        _strip(rate, 12.0, tall={3: 3.0}))
    template = ecg_simulator._template(rate, True, 5)
    _check_template(template, rate)
    # The median beat: the ordinary R wave (1 mV in lead I), not the tall one.
    assert template.beat[0, template.r_index] == pytest.approx(0.5, abs=0.05)


def test_a_strip_without_beats_is_drawn_again_from_derived_seeds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rate = 45.0
    calls: list[tuple[int, float | None]] = []

    def ecgsyn(rate: float, with_p: bool, seed: int, duration: float | None = None,
               shape: ecg_simulator.BeatShape | None = None) -> np.ndarray:
        calls.append((seed, duration))
        if len(calls) < 3:  # the seed's own run and the first retry: a flat line
            return np.zeros((12, 3000))
        return _strip(rate, duration or 12.0)

    monkeypatch.setattr(ecg_simulator, "_ecgsyn", ecgsyn)
    first = ecg_simulator._template(rate, False, 7)
    _check_template(first, rate)
    seeds = [seed for seed, _ in calls]
    assert seeds == [7, ecg_simulator._sub_seed(7, 1), ecg_simulator._sub_seed(7, 2)]
    assert len(set(seeds)) == 3
    # The retries run longer than the seed's own strip (about nine beats), and longer
    # each time.
    durations = [d for _, d in calls[1:] if d is not None]
    assert len(durations) == 2 and durations[0] > 9 * 60.0 / rate
    assert durations == sorted(set(durations))
    # Derived from the seed alone: the same retries and the same template again.
    calls.clear()
    again = ecg_simulator._template(rate, False, 7)
    assert [seed for seed, _ in calls] == seeds
    np.testing.assert_array_equal(again.beat, first.beat)


def test_no_beats_in_any_run_is_an_error_that_says_so(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    seeds: list[int] = []

    def flat(rate: float, with_p: bool, seed: int, duration: float | None = None,
             shape: ecg_simulator.BeatShape | None = None) -> np.ndarray:
        seeds.append(seed)
        return np.zeros((12, 3000))

    monkeypatch.setattr(ecg_simulator, "_ecgsyn", flat)
    with pytest.raises(RuntimeError, match=r"too few beats .* 6 runs \(seed 3\)"):
        ecg_simulator._template(60.0, True, 3)
    assert len(seeds) == len(set(seeds)) == ecg_simulator.TEMPLATE_TRIES


@pytest.mark.parametrize(("rate", "with_p", "seed"), [
    # Real ECGSYN strips (neurokit2 0.3.0) whose tallest R wave hid the others.
    (35.0, True, 7), (35.0, False, 10), (45.0, True, 41),
])
def test_ecgsyn_strips_with_uneven_r_waves(rate: float, with_p: bool, seed: int) -> None:
    first = ecg_simulator._template(rate, with_p, seed)
    _check_template(first, rate)
    again = ecg_simulator._template(rate, with_p, seed)
    np.testing.assert_array_equal(again.beat, first.beat)


def _check_bank(bank: TemplateBank, rates: tuple[int, ...], shapes: int, pvcs: int) -> None:
    assert len(bank.templates) == len(rates) * shapes and len(bank.pvcs) == pvcs
    for (i, _shape), template in bank.templates.items():
        _check_template(template, float(rates[i]))
    for template in bank.pvcs:
        _check_template(template, ecg_simulator.PVC_RATE)


@pytest.mark.parametrize("seed", [5, 100_005])
def test_the_quick_training_banks(seed: int) -> None:
    """``train ecg-rhythm --quick --seed 5``: its training and held-out banks."""
    bank = TemplateBank(seed, QUICK_RATES, QUICK_SHAPES, QUICK_PVC_SHAPES)
    _check_bank(bank, QUICK_RATES, QUICK_SHAPES, QUICK_PVC_SHAPES)
    assert bank.shapes[0] == ecg_simulator.ECGSYN_SHAPE and bank.shapes[1] != bank.shapes[0]


def _qrs_energy(signal: np.ndarray) -> np.ndarray:
    """Squared slope summed over the leads, after a 20 ms moving average: the QRS
    complexes' steep slopes stand far above the P and T waves and the noise."""
    kernel = np.ones(5) / 5
    smooth = np.stack([np.convolve(lead, kernel, mode="valid") for lead in signal])
    return np.asarray((np.diff(smooth, axis=1) ** 2).sum(axis=0))


def _beat_period(signal: np.ndarray) -> tuple[float, float]:
    """The strip's beat period (s) and how regular it is: the first autocorrelation
    peak of the QRS energy at least half as high as the tallest (so not a multiple
    of the period), and that peak's height relative to lag 0."""
    energy = _qrs_energy(signal)
    energy = energy - energy.mean()
    ac = np.correlate(energy, energy, mode="full")[len(energy) - 1:][:len(energy) // 2]
    lo = round(0.25 * SAMPLING_RATE)  # past the QRS itself: below 240 /min
    inner = ac[lo:-1]
    peaks = lo + np.flatnonzero((inner >= ac[lo - 1:-2]) & (inner > ac[lo + 1:]))
    first = int(peaks[ac[peaks] >= 0.5 * ac[peaks].max()][0])
    return first / SAMPLING_RATE, float(ac[first] / ac[0])


@pytest.mark.parametrize("seed", [0, 5])
def test_every_rate_drawn_gives_a_record_with_beats(seed: int) -> None:
    """The whole template bank, then records across the whole range ``draw`` uses for
    each rhythm, reproducible from the seed.  The beats are looked for in the signal the
    model reads (``core.ecg_filters.clean``: wander and mains removed)."""
    bank = TemplateBank(seed)
    _check_bank(bank, ecg_simulator.TEMPLATE_RATES, ecg_simulator.TEMPLATE_SHAPES,
                ecg_simulator.PVC_SHAPES)
    cases = [("sinus", float(r)) for r in np.linspace(35, 185, 16)]
    for rhythm, (_share, low, high) in ecg_simulator.MIX.items():
        cases += [(rhythm, float(r)) for r in np.linspace(low, high, 4)]
    for rhythm, rate in cases:
        records = [ecg_simulator.simulate(np.random.default_rng(seed), bank, rhythm=rhythm,
                                          rate=rate) for _ in range(2)]
        record = records[0]
        np.testing.assert_array_equal(records[1].signal, record.signal)
        assert record.signal.shape == (12, round(ecg_simulator.DURATION_S * SAMPLING_RATE))
        assert record.signal.dtype == np.float32 and np.isfinite(record.signal).all()
        assert record.labels == ecg_simulator.rate_labels(rhythm, record.heart_rate)
        assert np.ptp(record.signal, axis=1).min() > 0.1
        # The same beats without wander, hum, EMG and noise (drawn last, from the same
        # generator), in the signal the model reads.
        beats = ecg_simulator.simulate(np.random.default_rng(seed), bank, rhythm=rhythm,
                                       rate=rate, artefacts=False)
        assert beats.heart_rate == record.heart_rate
        clean = ecg_filters.clean(beats.signal, SAMPLING_RATE)
        # QRS complexes: the slope energy comes in spikes (white noise alone: ~2.4).
        energy = _qrs_energy(clean)
        assert np.percentile(energy, 99) > 8 * np.median(energy), (rhythm, rate)
        if rhythm == "sinus":
            # ... one per RR interval, at the rate asked for.
            assert record.heart_rate == pytest.approx(rate, rel=0.1)
            period, regularity = _beat_period(clean)
            assert 60.0 / period == pytest.approx(record.heart_rate, rel=0.1), rate
            # (Narrow QRS spikes: +-8 % of respiratory sinus arrhythmia lowers the peak.)
            assert regularity > 0.15, rate
        elif rhythm in ("sinus_pvc", "sinus_pac"):
            # Premature atrial beats reset the sinus node and interpolated PVCs add
            # beats: up to half as many again.
            assert 0.9 * rate < record.heart_rate < 1.6 * rate, (rhythm, rate)
        else:
            assert record.heart_rate == pytest.approx(rate, rel=0.35), (rhythm, rate)
    first = ecg_simulator.dataset(seed, 6, bank)
    again = ecg_simulator.dataset(seed, 6, bank)
    for a, b in zip(first, again, strict=True):
        assert (a.rhythm, a.heart_rate, a.labels) == (b.rhythm, b.heart_rate, b.labels)
        np.testing.assert_array_equal(a.signal, b.signal)


@pytest.fixture(scope="module")
def quick_bank() -> TemplateBank:
    return TemplateBank(11, QUICK_RATES, QUICK_SHAPES, QUICK_PVC_SHAPES)


def test_the_labels_of_each_rhythm(quick_bank: TemplateBank) -> None:
    rng = np.random.default_rng(3)
    for rhythm in ecg_simulator.RHYTHMS:
        record = ecg_simulator.simulate(rng, quick_bank, rhythm=rhythm, rate=80.0)
        assert record.labels["sinus_rhythm"] == rhythm.startswith("sinus"), rhythm
        assert record.labels["atrial_fibrillation"] == (rhythm == "af"), rhythm
    with pytest.raises(ValueError, match="rhythm must be one of"):
        ecg_simulator.simulate(rng, quick_bank, rhythm="flutter", rate=80.0)
    drawn = {ecg_simulator.draw(rng)[0] for _ in range(400)}
    assert drawn == set(ecg_simulator.RHYTHMS)


@pytest.mark.parametrize("every", [2, 3])
def test_every_kth_beat_is_ectopic(quick_bank: TemplateBank, every: int) -> None:
    """Bigeminy and trigeminy: 1 beat in ``every`` is ectopic, and with full
    compensatory pauses the mean rate of PVCs stays the sinus rate."""
    for rhythm in ("sinus_pvc", "sinus_pac"):
        record = ecg_simulator.simulate(np.random.default_rng(every), quick_bank,
                                        rhythm=rhythm, rate=75.0, ectopic_every=every)
        beats = 14.0 * record.heart_rate / 60.0  # R waves are placed over 14 s
        assert record.details["ectopic_every"] == every
        assert record.details["ectopic_beats"] == pytest.approx(beats / every, abs=2.5)
        if rhythm == "sinus_pvc":  # an interpolated PVC adds a beat, others replace one
            rate = 75.0 * (1 + record.details["interpolated"] / every)
            assert record.heart_rate == pytest.approx(rate, rel=0.12)


def test_f_waves_and_wander_of_the_size_asked_for(quick_bank: TemplateBank) -> None:
    def af(f_wave_mv: float) -> np.ndarray:
        return ecg_simulator.simulate(np.random.default_rng(8), quick_bank, rhythm="af",
                                      rate=90.0, f_wave_mv=f_wave_mv, artefacts=False).signal

    f = (af(0.1) - af(0.0)).astype(np.float64)  # the same beats, the f-waves alone
    assert 0.02 < float(np.abs(f).max()) < 0.35
    spectrum = np.abs(np.fft.rfft(f[6]))  # V1
    peak_hz = float(np.fft.rfftfreq(f.shape[1], 1 / SAMPLING_RATE)[np.argmax(spectrum)])
    assert 3.5 <= peak_hz <= 9.5
    record = ecg_simulator.simulate(np.random.default_rng(9), quick_bank, rhythm="sinus",
                                    rate=70.0, wander_mv=1.0)
    assert record.details["wander_mv"] == 1.0
    slow = record.signal - ecg_filters.high_pass(record.signal, SAMPLING_RATE)
    slow -= slow.mean(axis=1, keepdims=True)
    assert 0.5 < float(np.abs(slow).max()) < 2.0
    assert float(np.abs(ecg_filters.clean(record.signal, SAMPLING_RATE)).max()) < 6.0


def test_dipole_beats_relate_as_the_limb_leads_do() -> None:
    """Einthoven: III = II - I, aVR = -(I + II) / 2, and a PVC is wider than a sinus
    QRS."""
    rng = np.random.default_rng(4)
    for ventricular in (False, True):
        beat = ecg_simulator.dipole_beat(rng, 0.8, ventricular=ventricular).beat
        np.testing.assert_allclose(beat[2], beat[1] - beat[0], atol=1e-9)
        np.testing.assert_allclose(beat[3], -(beat[0] + beat[1]) / 2, atol=1e-9)

    def width(beat: np.ndarray) -> float:
        energy = (np.diff(beat, axis=1) ** 2).sum(axis=0)
        return float(np.sum(energy > 0.1 * energy.max())) / SAMPLING_RATE

    narrow = [width(ecg_simulator.dipole_beat(rng, 0.8).beat) for _ in range(20)]
    wide = [width(ecg_simulator.dipole_beat(rng, 0.8, ventricular=True).beat)
            for _ in range(20)]
    assert np.median(wide) > 1.5 * np.median(narrow)
