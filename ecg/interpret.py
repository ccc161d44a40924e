"""Interpretation: explainable rule statements over the measurements.

Each rule is a few lines that compare named measurements with the documented thresholds
below and return a :class:`Statement` carrying exactly the numbers it used, so a reader
can check (and overrule) every statement. Rules never see the raw signal.

Sources of the thresholds:

* AHA/ACCF/HRS Recommendations for the Standardization and Interpretation of the ECG,
  Part III (Surawicz et al., Circulation 2009;119:e235) -- rate, AV conduction, QRS
  duration / bundle branch block; Part IV (Rautaharju et al., Circulation 2009;119:e241)
  -- QT prolongation; Part V (Hancock et al., Circulation 2009;119:e251) -- LVH voltage.
* Sokolow M, Lyon TP. Am Heart J 1949;37:161 -- SV1 + RV5/RV6 >= 3.5 mV.
* Fourth Universal Definition of Myocardial Infarction (Thygesen et al., Eur Heart J
  2019;40:237), Table 4 -- new ST elevation at the J point in two contiguous leads.
* Drew BJ et al., AHA/ACCF scientific statement on prevention of torsade de pointes in
  hospital settings (Circulation 2010;121:1047) -- QTc > 500 ms as the critical level.
* Fourth UDMI, Table 5 -- pathological Q waves (V2-V3 >= 20 ms or QS; other leads
  >= 30 ms and >= 0.1 mV deep or QS; two contiguous leads of a group).
* Rautaharju et al. 2009 (Part IV) -- QT with a wide QRS: the QRS widening is removed
  (QT - (QRS - 100 ms)), after Bogossian/Rautaharju's QRS-adjusted QT.
* AHA/ACC/HRS 2018 bradycardia guideline (Kusumoto et al.) -- sinus pauses >= 3 s as a
  significant finding; the center calls them critical.
* Tateno & Glass 2001; Dash et al. 2009 (RMSSD/mean RR) -- AF from beat-to-beat RR
  irregularity, here together with the absence of P waves that repeat from beat to beat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ecg.measure import ALWAYS_PAUSE_MS, Measurements
from ecg.quality import Quality

# --- Rate (AHA/ACCF/HRS 2009 Part III: bradycardia < 60, tachycardia > 100 bpm) -------
BRADYCARDIA_BPM = 60.0
TACHYCARDIA_BPM = 100.0
#: Center critical-result policy (not a guideline cut-off): rates that need a call now.
CRITICAL_BRADYCARDIA_BPM = 40.0
CRITICAL_TACHYCARDIA_BPM = 150.0

# --- Rhythm ---------------------------------------------------------------------------
#: RR coefficient of variation (between non-ventricular beats, pauses left out) above
#: which a rhythm is irregular. Sinus arrhythmia at rest rarely exceeds ~0.10.
IRREGULAR_RR_CV = 0.12
#: AF needs beat-to-beat irregularity: RMSSD / mean RR above AF_NRMSSD (AF detectors use
#: 0.06-0.1; sinus arrhythmia's smooth drift stays below ~0.05) and at least
#: AF_IRREGULAR_FRACTION of successive RR differences above 10 % of the mean RR (AF with
#: an RR coefficient of variation of 0.15 gives ~0.6). Premature beats and marked sinus
#: arrhythmia reach both too: what separates them from AF is the P wave ...
AF_NRMSSD = 0.08
AF_IRREGULAR_FRACTION = 0.3
#: ... over at least this many beats, and no P wave that repeats from beat to beat
#: (``Measurements.p_wave_present``; see ``ecg.measure.P_CONSISTENT_SHARE``).
AF_MIN_BEATS = 6
#: A pause (``ecg.measure.PAUSE_MS``, >= 2 s) of ALWAYS_PAUSE_MS (3 s) or more is critical.
CRITICAL_PAUSE_MS = ALWAYS_PAUSE_MS
#: Bigeminy: this many ectopic beats in a row, each after exactly one other beat.
BIGEMINY_MIN_ECTOPICS = 3

# --- Conduction (Part III) ------------------------------------------------------------
FIRST_DEGREE_AVB_PR_MS = 200.0
WIDE_QRS_MS = 120.0  # complete bundle branch block in adults

# --- LVH voltage (Sokolow-Lyon; Cornell for known sex, Part V) ------------------------
SOKOLOW_LYON_MV = 3.5
CORNELL_MV = {"M": 2.8, "F": 2.0}

# --- QT (Part IV: prolonged QTc >= 450 ms men, >= 460 ms women) -----------------------
LONG_QTC_MS = {"M": 450.0, "F": 460.0}
LONG_QTC_UNKNOWN_SEX_MS = 460.0
CRITICAL_QTC_MS = 500.0
#: With a QRS this wide, QT is adjusted for the QRS widening: QT - (QRS - QT_QRS_REF_MS).
QT_ADJUST_QRS_MS = 120.0
QT_QRS_REF_MS = 100.0

# --- Q waves (4th UDMI, Table 5) and T-wave inversion -----------------------------------
Q_WAVE_V2V3_MS = 20.0
Q_WAVE_MS = 30.0
Q_WAVE_MV = 0.1
#: V2-V3 "any Q wave": at least this deep, so that noise is not a Q wave.
Q_WAVE_V2V3_MV = 0.05
#: Lead groups (contiguous leads) for Q waves and T inversion.
LEAD_GROUPS: dict[str, tuple[str, ...]] = {
    "inferior": ("II", "III", "aVF"),
    "anterior": ("V1", "V2", "V3", "V4"),
    "lateral": ("I", "aVL", "V5", "V6"),
}
#: T inversion: at least this deep in a lead with an upright QRS (R > S), in two leads of
#: a group (Part V: T inversion >= 0.1 mV in leads with a dominant R).
T_INVERSION_MV = 0.1
T_INVERSION_LEADS = ("I", "II", "aVL", "aVF", "V2", "V3", "V4", "V5", "V6")

# --- Normal ECG ---------------------------------------------------------------------------
NORMAL_PR_MS = (120.0, 200.0)
NORMAL_QRS_MAX_MS = 110.0
NORMAL_AXIS_DEG = (-30.0, 90.0)

# --- STEMI (4th UDMI, Table 4: J-point elevation, two contiguous leads) ---------------
STEMI_OTHER_LEADS_MV = 0.1
STEMI_V2V3_MV = {"M_40_plus": 0.2, "M_under_40": 0.25, "F": 0.15}
#: Contiguous lead pairs: the Cabrera limb sequence (aVL, I, -aVR, II, aVF, III) and
#: neighbouring precordial leads, plus I/aVL with V5/V6 (lateral wall).
CONTIGUOUS_PAIRS: tuple[tuple[str, str], ...] = (
    ("aVL", "I"), ("I", "II"), ("II", "aVF"), ("aVF", "III"), ("II", "III"),
    ("V1", "V2"), ("V2", "V3"), ("V3", "V4"), ("V4", "V5"), ("V5", "V6"),
    ("I", "V6"), ("aVL", "V6"), ("I", "V5"),
)


@dataclass(frozen=True)
class Statement:
    """One interpretive statement: a stable ``code``, reader-facing ``text`` and the
    ``evidence`` (measurement name -> value) that triggered it."""

    code: str
    text: str
    evidence: dict[str, Any] = field(default_factory=dict)
    critical: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "critical": self.critical,
                "evidence": {k: _round(v) for k, v in self.evidence.items()}}


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def atrial_fibrillation_suspected(m: Measurements) -> bool:
    """Irregularly irregular (beat to beat) RR with no P wave that repeats across beats."""
    return (m.n_beats >= AF_MIN_BEATS and not m.p_wave_present
            and m.nrmssd >= AF_NRMSSD and m.rr_irregular_fraction >= AF_IRREGULAR_FRACTION)


def sinus(m: Measurements) -> bool:
    """P waves that repeat before every beat with a measurable PR interval."""
    return m.p_wave_present and m.pr_ms is not None and not atrial_fibrillation_suspected(m)


def _rhythm(m: Measurements) -> list[Statement]:
    out: list[Statement] = []
    hr = m.heart_rate_bpm
    irregular = m.rr_cv > IRREGULAR_RR_CV
    ev: dict[str, Any] = {
        "heart_rate_bpm": hr, "rr_cv": m.rr_cv, "nrmssd": m.nrmssd,
        "rr_irregular_fraction": m.rr_irregular_fraction,
        "p_wave_present": m.p_wave_present, "p_consistency": m.p_consistency,
    }
    af = atrial_fibrillation_suspected(m)
    if af:
        out.append(Statement(
            "atrial_fibrillation_suspected",
            "Irregularly irregular rhythm without repeating P waves, suggesting atrial "
            "fibrillation",
            {**ev, "threshold_nrmssd": AF_NRMSSD,
             "threshold_irregular_fraction": AF_IRREGULAR_FRACTION},
        ))
    elif sinus(m):
        out.append(Statement("sinus_rhythm", "Sinus rhythm", {**ev, "pr_ms": m.pr_ms}))
        if irregular and m.n_pvc == 0 and m.n_pac == 0 and not m.pauses:
            out.append(Statement("sinus_arrhythmia", "Sinus arrhythmia",
                                 {**ev, "threshold_rr_cv": IRREGULAR_RR_CV}))
    elif irregular:
        out.append(Statement("irregular_rhythm", "Irregular rhythm without repeating P waves",
                             {**ev, "threshold_rr_cv": IRREGULAR_RR_CV}))
    else:
        extra = (" (supraventricular tachycardia, or P waves hidden in the T waves)"
                 if hr > TACHYCARDIA_BPM else " (junctional or ectopic atrial rhythm?)")
        out.append(Statement("regular_rhythm_without_p", "Regular rhythm without distinct P "
                             "waves" + extra, ev))
    is_sinus = bool(out) and out[0].code == "sinus_rhythm"
    prefix = "Sinus " if is_sinus else ""
    if hr < BRADYCARDIA_BPM:
        critical = hr < CRITICAL_BRADYCARDIA_BPM
        out.append(Statement(
            "bradycardia",
            f"{prefix}bradycardia ({hr:.0f} bpm)".capitalize()
            + (" -- marked, critical" if critical else ""),
            {"heart_rate_bpm": hr, "threshold_bpm": BRADYCARDIA_BPM,
             "critical_below_bpm": CRITICAL_BRADYCARDIA_BPM},
            critical,
        ))
    elif hr > TACHYCARDIA_BPM:
        critical = hr > CRITICAL_TACHYCARDIA_BPM
        out.append(Statement(
            "tachycardia",
            f"{prefix}tachycardia ({hr:.0f} bpm)".capitalize()
            + (" -- marked, critical" if critical else ""),
            {"heart_rate_bpm": hr, "threshold_bpm": TACHYCARDIA_BPM,
             "critical_above_bpm": CRITICAL_TACHYCARDIA_BPM},
            critical,
        ))
    out += _pauses(m)
    out += _ectopy(m, af)
    return out


def _pauses(m: Measurements) -> list[Statement]:
    if not m.pauses:
        return []
    longest = max(rr for _, rr in m.pauses)
    critical = longest >= CRITICAL_PAUSE_MS
    return [Statement(
        "pause",
        f"Pause of {longest / 1000:.1f} s" + (" -- critical, >= 3 s" if critical else "")
        + (f" ({len(m.pauses)} pauses)" if len(m.pauses) > 1 else ""),
        {"longest_rr_ms": longest, "pauses": [{"at_s": t, "rr_ms": rr} for t, rr in m.pauses],
         "critical_from_ms": CRITICAL_PAUSE_MS},
        critical,
    )]


def bigeminy(labels: str) -> bool:
    """Ectopic (V) beats that alternate with one other beat, BIGEMINY_MIN_ECTOPICS in a row."""
    return re.search(f"V(?:[NS]V){{{BIGEMINY_MIN_ECTOPICS - 1},}}", labels) is not None


def _ectopy(m: Measurements, af: bool) -> list[Statement]:
    out: list[Statement] = []
    labels = m.beat_labels
    if m.n_pvc:
        ev = {"n_pvc": m.n_pvc, "n_beats": m.n_beats, "beat_labels": labels}
        out.append(Statement(
            "premature_ventricular_complexes",
            f"Premature ventricular complexes ({m.n_pvc} of {m.n_beats} beats)", ev))
        if bigeminy(labels):
            out.append(Statement("ventricular_bigeminy", "Ventricular bigeminy",
                                 {**ev, "min_ectopics_in_a_row": BIGEMINY_MIN_ECTOPICS}))
    if m.n_pac and not af:
        out.append(Statement(
            "premature_atrial_complexes",
            f"Premature supraventricular (atrial) complexes ({m.n_pac} of {m.n_beats} beats)",
            {"n_pac": m.n_pac, "n_beats": m.n_beats, "beat_labels": labels}))
    return out


def _conduction(m: Measurements) -> list[Statement]:
    out: list[Statement] = []
    # Only with repeating P waves before a regular ventricular response: in an irregular
    # rhythm without P waves a "PR" is a fibrillatory wave's distance to the QRS.
    if sinus(m) and m.pr_ms is not None and m.pr_ms > FIRST_DEGREE_AVB_PR_MS:
        out.append(Statement(
            "first_degree_av_block", f"First-degree AV block (PR {m.pr_ms:.0f} ms)",
            {"pr_ms": m.pr_ms, "threshold_ms": FIRST_DEGREE_AVB_PR_MS},
        ))
    if m.qrs_ms is not None and m.qrs_ms >= WIDE_QRS_MS:
        v1 = m.qrs_net_mv.get("V1", 0.0)
        v6 = m.qrs_net_mv.get("V6", 0.0)
        if v1 > 0:
            pattern, code = "right bundle branch block pattern", "wide_qrs_rbbb_pattern"
        elif v6 > 0:
            pattern, code = "left bundle branch block pattern", "wide_qrs_lbbb_pattern"
        else:
            pattern, code = "nonspecific intraventricular conduction delay", "wide_qrs"
        out.append(Statement(code, f"Wide QRS ({m.qrs_ms:.0f} ms), {pattern}",
                             {"qrs_ms": m.qrs_ms, "threshold_ms": WIDE_QRS_MS,
                              "qrs_net_V1_mv": v1, "qrs_net_V6_mv": v6}))
    return out


def _lvh(m: Measurements, sex: str | None) -> list[Statement]:
    if not m.r_amplitude_mv:
        return []
    sokolow = m.s_amplitude_mv["V1"] + max(m.r_amplitude_mv["V5"], m.r_amplitude_mv["V6"])
    evidence: dict[str, Any] = {"sokolow_lyon_mv": sokolow, "sokolow_threshold_mv": SOKOLOW_LYON_MV}
    met = sokolow >= SOKOLOW_LYON_MV
    if sex in CORNELL_MV:
        cornell = m.r_amplitude_mv["aVL"] + m.s_amplitude_mv["V3"]
        evidence |= {"cornell_mv": cornell, "cornell_threshold_mv": CORNELL_MV[sex]}
        met = met or cornell > CORNELL_MV[sex]
    if not met:
        return []
    return [Statement("lvh_voltage", "Left ventricular hypertrophy by voltage criteria", evidence)]


def _long_qt(m: Measurements, sex: str | None) -> list[Statement]:
    # Fridericia, not Bazett, decides: Bazett over-corrects above ~90 bpm and would call
    # every sinus tachycardia a long QT (ICH E14 also prefers Fridericia).
    rr_s = m.rr_ms / 1000.0
    hidden = m.qt_ms is None
    qt = m.qt_ms if m.qt_ms is not None else m.qt_min_ms
    if qt is None:
        return []
    evidence: dict[str, Any] = {"qt_ms": m.qt_ms, "qtc_fridericia_ms": m.qtc_fridericia_ms,
                                "qtc_bazett_ms": m.qtc_bazett_ms, "rr_ms": m.rr_ms}
    if hidden:
        evidence |= {"qt_min_ms": m.qt_min_ms,
                     "qt_not_measurable": m.not_measurable.get("qt_ms", "")}
    method = "QTc (Fridericia)"
    if m.qrs_ms is not None and m.qrs_ms >= QT_ADJUST_QRS_MS:
        # A wide QRS lengthens QT without lengthening repolarisation.
        qt = qt - (m.qrs_ms - QT_QRS_REF_MS)
        method = (f"QRS-adjusted QT = QT - (QRS - {QT_QRS_REF_MS:.0f} ms), QRS "
                  f"{m.qrs_ms:.0f} ms >= {QT_ADJUST_QRS_MS:.0f} ms; Fridericia")
        evidence |= {"qrs_ms": m.qrs_ms, "qt_adjusted_ms": qt}
        if not hidden:
            evidence["jt_ms"] = m.qt_ms - m.qrs_ms if m.qt_ms is not None else None
    qtc = qt / rr_s ** (1.0 / 3.0)
    if "adjusted" in method:
        evidence["qtc_fridericia_adjusted_ms"] = qtc
    if hidden:
        method = "lower bound: T peak + shortest T peak-to-end interval; " + method
        evidence["qtc_fridericia_min_ms"] = qtc
    evidence["qt_method"] = method
    limit = LONG_QTC_MS.get(sex or "", LONG_QTC_UNKNOWN_SEX_MS)
    if qtc < limit:
        return []
    critical = qtc > CRITICAL_QTC_MS
    label = ("QRS-adjusted " if "adjusted" in method else "") + (
        "QTc at least" if hidden else "QTc")
    return [Statement(
        "long_qt",
        f"Prolonged QT ({label} {qtc:.0f} ms"
        + ("; T end hidden, measure by hand)" if hidden else ")")
        + (" -- critical, > 500 ms" if critical else ""),
        {**evidence, "threshold_ms": limit, "critical_above_ms": CRITICAL_QTC_MS},
        critical,
    )]


def _not_measurable(m: Measurements) -> list[Statement]:
    """QRS and QT that could not be measured: said, with the reason, for a human to do."""
    out: list[Statement] = []
    names = {"qrs_ms": ("qrs_not_measurable", "QRS duration"),
             "qt_ms": ("qt_not_measurable", "QT interval")}
    for key, (code, label) in names.items():
        reason = m.not_measurable.get(key)
        if reason is not None:
            out.append(Statement(code, f"{label} not measurable ({reason}); measure by hand",
                                 {"reason": reason}))
    return out


def _q_waves(m: Measurements) -> list[Statement]:
    """Pathological Q waves (4th UDMI) in two leads of a group: an infarct pattern."""
    if not m.q_duration_ms or m.qrs_ms is None:
        return []
    if m.qrs_ms >= WIDE_QRS_MS and m.qrs_net_mv.get("V1", 0.0) <= 0:
        return []  # LBBB / nonspecific delay: Q-wave criteria do not apply
    out: list[Statement] = []
    for group, leads in LEAD_GROUPS.items():
        hits: dict[str, dict[str, Any]] = {}
        for lead in leads:
            dur, depth = m.q_duration_ms.get(lead, 0.0), m.q_depth_mv.get(lead, 0.0)
            qs = m.qs_complex.get(lead, False)
            if lead in ("V2", "V3"):
                met = qs or (dur >= Q_WAVE_V2V3_MS and depth >= Q_WAVE_V2V3_MV)
            elif lead == "V1":
                met = False  # a QS in V1 is normal
            else:
                met = qs or (dur >= Q_WAVE_MS and depth >= Q_WAVE_MV)
            if met:
                hits[lead] = {"q_ms": dur, "q_mv": depth, "qs": qs}
        if len(hits) >= 2:
            out.append(Statement(
                f"q_waves_{group}",
                f"Pathological Q waves in {', '.join(hits)}: {group} infarct pattern, age "
                "undetermined",
                {"leads": hits, "group": list(leads),
                 "criteria": "V2-V3: Q >= 20 ms or QS; others: Q >= 30 ms and >= 0.1 mV or QS"},
            ))
    return out


def _t_inversion(m: Measurements) -> list[Statement]:
    if not m.t_amplitude_mv or m.qrs_ms is None or m.qrs_ms >= WIDE_QRS_MS:
        return []  # with a wide QRS, T inversion is secondary to it
    out: list[Statement] = []
    for group, leads in LEAD_GROUPS.items():
        inverted = {
            lead: m.t_amplitude_mv[lead] for lead in leads
            if lead in T_INVERSION_LEADS and m.t_amplitude_mv.get(lead, 0.0) <= -T_INVERSION_MV
            and m.r_amplitude_mv.get(lead, 0.0) > m.s_amplitude_mv.get(lead, 0.0)
        }
        if len(inverted) >= 2:
            out.append(Statement(
                f"t_wave_inversion_{group}",
                f"T-wave inversion in {', '.join(inverted)} ({group})",
                {"t_amplitude_mv": inverted, "threshold_mv": -T_INVERSION_MV}))
    return out


def _normal(m: Measurements, quality: Quality, statements: list[Statement]) -> list[Statement]:
    """'Normal ECG' when sinus rhythm is the only statement and every interval is normal."""
    if [s.code for s in statements] != ["sinus_rhythm"] or quality.grade not in (
            "good", "acceptable"):
        return []
    checks = {
        "heart_rate_bpm": BRADYCARDIA_BPM <= m.heart_rate_bpm <= TACHYCARDIA_BPM,
        "pr_ms": m.pr_ms is not None and NORMAL_PR_MS[0] <= m.pr_ms <= NORMAL_PR_MS[1],
        "qrs_ms": m.qrs_ms is not None and m.qrs_ms < NORMAL_QRS_MAX_MS,
        "qt_ms": m.qt_ms is not None,
        "qrs_axis_deg": m.qrs_axis_deg is not None
        and NORMAL_AXIS_DEG[0] <= m.qrs_axis_deg <= NORMAL_AXIS_DEG[1],
    }
    if not all(checks.values()):
        return []
    return [Statement("normal_ecg", "Normal ECG",
                      {"heart_rate_bpm": m.heart_rate_bpm, "pr_ms": m.pr_ms,
                       "qrs_ms": m.qrs_ms, "qtc_fridericia_ms": m.qtc_fridericia_ms,
                       "qrs_axis_deg": m.qrs_axis_deg})]


def stemi_thresholds(sex: str | None, age: float | None) -> dict[str, float]:
    """Per-lead ST-elevation cut-points (mV) of the 4th UDMI for this patient.

    Unknown sex uses the women's (lowest) V2-V3 value so that no STEMI is missed; unknown
    age in men uses the >= 40 years value.
    """
    if sex == "M":
        v2v3 = STEMI_V2V3_MV["M_under_40"] if age is not None and age < 40 else (
            STEMI_V2V3_MV["M_40_plus"])
    else:
        v2v3 = STEMI_V2V3_MV["F"]
    leads = ("I", "II", "III", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    return {lead: v2v3 if lead in ("V2", "V3") else STEMI_OTHER_LEADS_MV for lead in leads}


def _stemi(m: Measurements, quality: Quality, sex: str | None, age: float | None
           ) -> list[Statement]:
    if not m.st_j_mv or not m.st_jx_mv:
        return []
    limits = stemi_thresholds(sex, age)
    usable = {q.lead for q in quality.leads if q.usable}
    # Both J and J+x (x = 60 ms, 40 ms above 100 bpm, never past halfway to the T peak)
    # must be elevated: a J point placed a few ms early (still on the R downstroke)
    # would otherwise read as ST elevation, and at fast rates J+60 is on the T wave.
    elevated = {
        lead for lead, limit in limits.items()
        if lead in usable and min(m.st_j_mv[lead], m.st_jx_mv[lead]) >= limit
    }
    pairs = [p for p in CONTIGUOUS_PAIRS if p[0] in elevated and p[1] in elevated]
    if not pairs:
        return []
    leads = sorted({lead for p in pairs for lead in p}, key=list(limits).index)
    evidence = {
        "leads": leads,
        "st_j_mv": {lead: m.st_j_mv[lead] for lead in leads},
        f"st_j{m.st_offset_ms:.0f}_mv": {lead: m.st_jx_mv[lead] for lead in leads},
        "st_offset_ms": m.st_offset_ms,
        "thresholds_mv": {lead: limits[lead] for lead in leads},
        "patient_sex": sex, "patient_age_years": age,
    }
    if m.qrs_ms is not None and m.qrs_ms >= WIDE_QRS_MS:
        # Secondary ST-T changes of bundle branch block mimic STEMI; UDMI criteria do not
        # apply (Sgarbossa-type rules would), so this is reported but not called a STEMI.
        return [Statement(
            "st_elevation_wide_qrs",
            f"ST elevation in {', '.join(leads)} with wide QRS; STEMI voltage criteria not "
            "applicable, review urgently",
            {**evidence, "qrs_ms": m.qrs_ms},
        )]
    return [Statement(
        "stemi",
        f"ST elevation in {', '.join(leads)} meeting STEMI criteria -- critical",
        evidence, critical=True,
    )]


def interpret(
    m: Measurements, quality: Quality, sex: str | None = None, age: float | None = None,
) -> list[Statement]:
    """All rule statements for one ECG, quality statements first."""
    out: list[Statement] = []
    if quality.limb_reversal_suspected:
        out.append(Statement(
            "limb_lead_reversal_suspected",
            "Possible limb lead reversal (lead I inverted, aVR upright); repeat the ECG",
            dict(quality.reversal_evidence),
        ))
    if quality.grade in ("poor", "unusable"):
        out.append(Statement("poor_quality", f"Signal quality {quality.grade}",
                             {"problems": list(quality.problems),
                              "confidence": quality.confidence}))
    if quality.rhythm_reliable:
        out += _rhythm(m)
    else:
        # Spikes, clipping and dropouts pass for beats or pauses: no rhythm, regularity or
        # rate statement is made from RR intervals that may belong to the artefact.
        out.append(Statement(
            "rhythm_not_assessable",
            f"Rhythm not assessable: artefact in {quality.artefact_fraction:.0%} of the "
            "record; repeat the ECG",
            {"artefact_fraction": quality.artefact_fraction,
             "artefact_intervals_s": quality.artefact_intervals_s(),
             "heart_rate_bpm_unreliable": m.heart_rate_bpm},
        ))
    out += _conduction(m)
    out += _lvh(m, sex)
    out += _q_waves(m)
    out += _t_inversion(m)
    out += _long_qt(m, sex)
    out += _not_measurable(m)
    out += _stemi(m, quality, sex, age)
    out += _normal(m, quality, out)
    return out
