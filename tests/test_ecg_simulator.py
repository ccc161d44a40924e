"""The ECG simulator at every rate the training draws: a template for every rate of the
bank, however unevenly ECGSYN draws the R waves of a strip, the same one from the same
seed, and records with beats at the rate asked for."""

from __future__ import annotations

import numpy as np
import pytest

from ai_models import ecg_simulator
from ai_models.ecg_simulator import SAMPLING_RATE, Template, TemplateBank

#: ``ai_models.train.ECG_QUICK_RATES``, the bank of ``train ecg-rhythm --quick``
#: (repeated here so that this module does not import torch).
QUICK_RATES = (45, 85, 125, 165)


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
    monkeypatch.setattr(ecg_simulator, "_ecgsyn", lambda rate, with_p, seed, duration=None:
                        _strip(rate, 12.0, tall={3: 3.0}))
    template = ecg_simulator._template(rate, True, 5)
    _check_template(template, rate)
    # The median beat: the ordinary R wave (1 mV in lead I), not the tall one.
    assert template.beat[0, template.r_index] == pytest.approx(0.5, abs=0.05)


def test_a_strip_without_beats_is_drawn_again_from_derived_seeds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rate = 45.0
    calls: list[tuple[int, float | None]] = []

    def ecgsyn(rate: float, with_p: bool, seed: int, duration: float | None = None
               ) -> np.ndarray:
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

    def flat(rate: float, with_p: bool, seed: int, duration: float | None = None
             ) -> np.ndarray:
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


@pytest.mark.parametrize("seed", [5, 100_005])
def test_the_quick_training_banks(seed: int) -> None:
    """``train ecg-rhythm --quick --seed 5``: its training and held-out banks."""
    bank = TemplateBank(seed, QUICK_RATES)
    for (i, _with_p), template in bank.templates.items():
        _check_template(template, float(QUICK_RATES[i]))


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
    """The whole template bank, then records across the whole range ``draw`` uses
    (sinus 35-185 /min, AF 50-170 /min), reproducible from the seed."""
    bank = TemplateBank(seed)
    for (i, _with_p), template in bank.templates.items():
        _check_template(template, float(ecg_simulator.TEMPLATE_RATES[i]))
    cases = [("sinus", float(r)) for r in np.linspace(35, 185, 16)]
    cases += [("af", float(r)) for r in np.linspace(50, 170, 7)]
    for rhythm, rate in cases:
        records = [ecg_simulator.simulate(np.random.default_rng(seed), bank, rhythm=rhythm,
                                          rate=rate) for _ in range(2)]
        record = records[0]
        np.testing.assert_array_equal(records[1].signal, record.signal)
        assert record.signal.shape == (12, round(ecg_simulator.DURATION_S * SAMPLING_RATE))
        assert record.signal.dtype == np.float32 and np.isfinite(record.signal).all()
        assert record.labels == ecg_simulator.rate_labels(rhythm, record.heart_rate)
        assert np.ptp(record.signal, axis=1).min() > 0.1
        # QRS complexes: the slope energy comes in spikes (white noise alone: ~2.4).
        energy = _qrs_energy(record.signal)
        assert np.percentile(energy, 99) > 8 * np.median(energy), (rhythm, rate)
        if rhythm == "sinus":
            # ... one per RR interval, at the rate asked for.
            assert record.heart_rate == pytest.approx(rate, rel=0.1)
            period, regularity = _beat_period(record.signal)
            assert 60.0 / period == pytest.approx(record.heart_rate, rel=0.1), rate
            assert regularity > 0.2, rate
        else:
            assert record.heart_rate == pytest.approx(rate, rel=0.35)
    first = ecg_simulator.dataset(seed, 6, bank)
    again = ecg_simulator.dataset(seed, 6, bank)
    for a, b in zip(first, again, strict=True):
        assert (a.rhythm, a.heart_rate, a.labels) == (b.rhythm, b.heart_rate, b.labels)
        np.testing.assert_array_equal(a.signal, b.signal)
