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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ecg.measure import Measurements
from ecg.quality import Quality

# --- Rate (AHA/ACCF/HRS 2009 Part III: bradycardia < 60, tachycardia > 100 bpm) -------
BRADYCARDIA_BPM = 60.0
TACHYCARDIA_BPM = 100.0
#: Center critical-result policy (not a guideline cut-off): rates that need a call now.
CRITICAL_BRADYCARDIA_BPM = 40.0
CRITICAL_TACHYCARDIA_BPM = 150.0

# --- Rhythm ---------------------------------------------------------------------------
#: RR coefficient of variation above which the rhythm is called irregular. Sinus
#: arrhythmia at rest rarely exceeds ~0.10; AF detectors commonly use 0.10-0.15.
IRREGULAR_RR_CV = 0.12
#: Normalised RMSSD (RMSSD / mean RR) above which irregularity is beat-to-beat (AF-like)
#: rather than a slow drift (sinus arrhythmia).
AF_NRMSSD = 0.10

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


def _rhythm(m: Measurements) -> list[Statement]:
    out: list[Statement] = []
    hr = m.heart_rate_bpm
    nrmssd = m.rmssd_ms / m.rr_ms if m.rr_ms else 0.0
    irregular = m.rr_cv > IRREGULAR_RR_CV
    ev = {"heart_rate_bpm": hr, "rr_cv": m.rr_cv, "p_wave_present": m.p_wave_present}
    if irregular and not m.p_wave_present and nrmssd > AF_NRMSSD:
        out.append(Statement(
            "atrial_fibrillation_suspected",
            "Irregularly irregular rhythm without distinct P waves, suggesting atrial "
            "fibrillation",
            {**ev, "nrmssd": nrmssd, "threshold_rr_cv": IRREGULAR_RR_CV},
        ))
    elif irregular:
        out.append(Statement("irregular_rhythm", "Irregular rhythm",
                             {**ev, "threshold_rr_cv": IRREGULAR_RR_CV}))
    elif m.p_wave_present and m.pr_ms is not None:
        out.append(Statement("sinus_rhythm", "Sinus rhythm", {**ev, "pr_ms": m.pr_ms}))
    sinus = bool(out) and out[0].code == "sinus_rhythm"
    prefix = "Sinus " if sinus else ""
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
    return out


def _conduction(m: Measurements) -> list[Statement]:
    out: list[Statement] = []
    if m.pr_ms is not None and m.pr_ms > FIRST_DEGREE_AVB_PR_MS:
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
    qtc = m.qtc_fridericia_ms
    if qtc is None:
        return []
    limit = LONG_QTC_MS.get(sex or "", LONG_QTC_UNKNOWN_SEX_MS)
    if qtc < limit:
        return []
    critical = qtc > CRITICAL_QTC_MS
    return [Statement(
        "long_qt",
        f"Prolonged QT (QTc {qtc:.0f} ms)" + (" -- critical, > 500 ms" if critical else ""),
        {"qt_ms": m.qt_ms, "qtc_fridericia_ms": qtc, "qtc_bazett_ms": m.qtc_bazett_ms,
         "threshold_ms": limit, "critical_above_ms": CRITICAL_QTC_MS},
        critical,
    )]


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
    if not m.st_j_mv or not m.st_j60_mv:
        return []
    limits = stemi_thresholds(sex, age)
    usable = {q.lead for q in quality.leads if q.usable}
    # Both J and J+60 must be elevated: a J point placed a few ms early (still on the
    # R downstroke) would otherwise read as ST elevation.
    elevated = {
        lead for lead, limit in limits.items()
        if lead in usable and min(m.st_j_mv[lead], m.st_j60_mv[lead]) >= limit
    }
    pairs = [p for p in CONTIGUOUS_PAIRS if p[0] in elevated and p[1] in elevated]
    if not pairs:
        return []
    leads = sorted({lead for p in pairs for lead in p}, key=list(limits).index)
    evidence = {
        "leads": leads,
        "st_j_mv": {lead: m.st_j_mv[lead] for lead in leads},
        "st_j60_mv": {lead: m.st_j60_mv[lead] for lead in leads},
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
    out += _long_qt(m, sex)
    out += _stemi(m, quality, sex, age)
    return out
