"""The model's answer for one exam for the EHR: a FHIR DiagnosticReport with one Observation per
column (any hemorrhage and each type), as a transaction Bundle, built and validated with the
`fhir.resources` models (pydantic 2).

FHIR R4B (4.3.0), the R4 line's last release: `fhir.resources` carries R5 and R4B, not 4.0.1, and
every element used here (DiagnosticReport.imagingStudy, result, conclusion; Observation.valueQuantity,
interpretation, derivedFrom, device) has the same shape in R4. The study is referenced by its
DICOM identifier (``urn:oid:<StudyInstanceUID>``) and the patient by PatientID: what an EHR
needs to file the report, nothing else from the header. The report's identifier is the SR's
SOPInstanceUID, so the two are one result; ids are derived (uuid5) so a second run is the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from hemo_pipeline.services.dicom_results import BINS, FINDINGS, MANUFACTURER, MODEL_NAME, NOT_FOR_DIAGNOSIS, RESULT_COLUMNS

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
HEMO_SYSTEM = "urn:hemo-pipeline:codes"
"""The 99HEMO codes of the SR as a FHIR code system (a URN until the project publishes a CodeSystem)."""
FHIR_VERSION = "4.3.0"


def _coding(code: Any) -> dict[str, str]:
    system = SNOMED if code.scheme_designator == "SCT" else HEMO_SYSTEM
    return {"system": system, "code": code.value, "display": code.meaning}


def _id(series_uid: str, version: str, kind: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, chr(31).join((series_uid, version, kind)))}"


def diagnostic_report_bundle(probabilities: Mapping[str, float], triage: str, calibrated: bool,
                             evidence: Mapping[str, list[str]], study_uid: str, series_uid: str, patient_id: str,
                             sr_uid: str, version: str, issued: str) -> dict[str, Any]:
    """The transaction Bundle as JSON-ready dict, validated by the R4B models (a malformed resource
    raises pydantic's ValidationError, a bug here, before anything is written)."""
    study = {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}
    subject = {"type": "Patient", "identifier": {"value": patient_id}} if patient_id else {"display": "unknown patient"}
    device = {"display": f"{MANUFACTURER} {MODEL_NAME} v{version}"}
    scale = "calibrated" if calibrated else "NOT calibrated"
    entries, results = [], []
    for column in RESULT_COLUMNS:
        full_url = _id(series_uid, version, f"observation-{column}")
        observation: dict[str, Any] = {
            "resourceType": "Observation", "status": "preliminary",
            "identifier": [{"system": "urn:ietf:rfc:3986", "value": full_url}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "imaging"}]}],
            "code": {"coding": [_coding(FINDINGS[column])], "text": f"AI probability of {FINDINGS[column].meaning}"},
            "subject": subject, "issued": issued, "device": device, "derivedFrom": [study],
            "valueQuantity": {"value": round(float(probabilities[column]), 6), "unit": "probability",
                              "system": UCUM, "code": "1"},
            "method": {"text": f"{MANUFACTURER} {MODEL_NAME} v{version} ({scale})"},
            "note": [{"text": f"{NOT_FOR_DIAGNOSIS}. Evidence (SOPInstanceUID): {' '.join(evidence[column])}"}],
        }
        if column == "any":
            observation["interpretation"] = [{"coding": [_coding(BINS[triage])], "text": f"triage: {triage}"}]
        results.append({"reference": full_url})
        entries.append({"fullUrl": full_url, "resource": observation,
                        "request": {"method": "PUT", "url": f"Observation?identifier=urn:ietf:rfc:3986|{full_url}"}})
    report_url = _id(series_uid, version, "report")
    report = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{sr_uid}"}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "24725-4", "display": "CT Head"}],
                 "text": "AI intracranial hemorrhage triage"},
        "subject": subject, "issued": issued, "imagingStudy": [study], "result": results,
        "conclusion": f"AI triage: {triage.replace('_', ' ')} (P(any hemorrhage) {float(probabilities['any']):.3f}, "
                      f"{scale}). {NOT_FOR_DIAGNOSIS}.",
    }
    entries.insert(0, {"fullUrl": report_url, "resource": report,
                       "request": {"method": "PUT",
                                   "url": f"DiagnosticReport?identifier=urn:dicom:uid|urn:oid:{sr_uid}"}})
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return dict(bundle.model_dump(mode="json", exclude_none=True))
