"""Code systems, Epic OIDs and clinical catalogues for the sandbox's synthetic data.

Everything here is a constant: the values mirror what Epic's sandbox sends (docs/epic-notes.md §3.12) so
readers that scan every ``coding[]`` (not ``coding[0]``) are exercised. Clinical content is synthetic and
generic.
"""

from __future__ import annotations

from typing import Any

# --- code systems (docs/epic-notes.md §3.12) --------------------------------------------------------------
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
US_CORE_COND_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/condition-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
MEDREQ_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
DOCREF_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
DIAG_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
MIME_SUFFICIENT = "urn:ihe:iti:xds:2017:mimeTypeSufficient"

EPIC = (
    "urn:oid:1.2.840.114350.1.13.0.1.7"  # the sandbox's OID arc; customers use 1.2.840.114350.1.13.<CID>...
)
EPIC_LAB_CODE = f"{EPIC}.2.768282"
EPIC_VITAL_CODE = f"{EPIC}.2.707679"
EPIC_LAB_CATEGORY = f"{EPIC}.10.798268.30"
EPIC_TEMPLATE = f"{EPIC}.2.707684"
EPIC_CSN = f"{EPIC}.3.698084.8"
EPIC_ENC_TYPE = f"{EPIC}.10.698084.10110"
EPIC_VISIT_TYPE = f"{EPIC}.10.698084.30"
EPIC_DOC_TYPE = f"{EPIC}.4.737880.5010"
EPIC_DOC_TYPE_ALT = f"{EPIC}.4.738757.5010"
EPIC_PROBLEM = f"{EPIC}.2.696784"
EPIC_MED = f"{EPIC}.2.698288"
EPIC_IMM = f"{EPIC}.2.768076"
EPIC_PROC = f"{EPIC}.2.696580"
EPIC_ALLERGEN = f"{EPIC}.2.767789"
EPIC_LEGAL_SEX = f"{EPIC}.10.698084.130.657370.19999000"
FLOWSHEET_ID = "http://open.epic.com/FHIR/StructureDefinition/observation-flowsheet-id"
EXT_TEMPLATE = "http://open.epic.com/FHIR/StructureDefinition/extension/template-id"
EXT_LEGAL_SEX = "http://open.epic.com/FHIR/StructureDefinition/extension/legal-sex"
EXT_ATTESTER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DocumentReference.attester"
# Patient identifier systems (docs/epic-notes.md §3.12).
ID_CEID = f"{EPIC}.3.688884.100"
ID_EPIC_MRN = f"{EPIC}.5.737384.0"
ID_EPI = f"{EPIC}.5.737384.14"
ID_INTERNAL = f"{EPIC}.2.698084"
ID_EXTERNAL = f"{EPIC}.2.698084.0"
ID_MYCHART = f"{EPIC}.3.878082.110"
ID_WPR_INTERNAL = f"{EPIC}.2.878082"
ID_DSTU2 = "http://open.epic.com/FHIR/StructureDefinition/patient-dstu2-fhir-id"
C4BB_IDENTIFIER_TYPE = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType"
OMB_RACE = "urn:oid:2.16.840.1.113883.6.238"
EXT_SEX_FOR_CLINICAL_USE = "http://open.epic.com/FHIR/StructureDefinition/extension/sex-for-clinical-use"
EXT_PRONOUNS = "http://open.epic.com/FHIR/StructureDefinition/extension/calculated-pronouns-to-use-for-text"
EXT_US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
EXT_US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
EXT_US_CORE_SEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-sex"
ID_STU3 = "http://open.epic.com/FHIR/StructureDefinition/patient-fhir-id"

OBS_CATEGORY_DISPLAY = {
    "vital-signs": "Vital Signs",
    "laboratory": "Laboratory",
    "social-history": "Social History",
}

# --- vital signs: (epic code, flowsheet id, text, extra LOINC codings, unit, mean, spread, decimals) -------------
# Blood pressure (85354-9, with components) is built separately; see _data_clinical.vital_observation.
VITALS: tuple[tuple[str, str, str, tuple[tuple[str, str], ...], str, float, float, int], ...] = (
    ("8", "tMqZ2R7e4W3fX9Y1bN0oKpQ0", "Pulse", (("8867-4", "Heart rate"),), "/min", 74.0, 12.0, 0),
    ("9", "t5sJd0wH2kYxVbN6Q3pLmRA0", "Resp", (("9279-1", "Respiratory rate"),), "/min", 16.0, 2.0, 0),
    ("6", "tT8uHf2Lq1mC5eWzXo0aNbQ0", "Temp", (("8310-5", "Body temperature"),), "Cel", 36.8, 0.4, 1),
    ("10", "tO2kRz8Vd6sF1gHj3KxY7wA0", "SpO2", (("59408-5", "Oxygen saturation"),), "%", 97.0, 1.5, 0),
    ("14", "tW9bC4nM2xZ7vL1kJ5hG3fQ0", "Weight", (("29463-7", "Body weight"),), "kg", 78.0, 14.0, 1),
    ("11", "tH6gF3dS1aQ9wE7rT5yU2iO0", "Height", (("8302-2", "Body height"),), "cm", 171.0, 9.0, 1),
    ("301070", "tB1nM3vC5xZ7lK9jH2gF4dS0", "BMI", (("39156-5", "Body mass index"),), "kg/m2", 26.5, 4.0, 1),
)
BP_EPIC = ("5", "tBdNYepLeojPG60x7nUx9kQ0", "BP")
BP_LOINC = (
    ("55284-4", "Blood pressure systolic and diastolic"),
    ("85354-9", "Blood pressure panel with all children optional"),
    ("8716-3", "Vital signs"),
)

# --- labs: (epic component id, LOINC, name, unit, low, high, decimals, specimen-ish group) ----------------------
LABS: tuple[tuple[str, str, str, str, float, float, int], ...] = (
    ("1558024", "2345-7", "Glucose", "mg/dL", 70.0, 99.0, 0),
    ("1558030", "2160-0", "Creatinine", "mg/dL", 0.6, 1.2, 2),
    ("1558026", "3094-0", "BUN", "mg/dL", 7.0, 20.0, 0),
    ("1558020", "2951-2", "Sodium", "mmol/L", 136.0, 145.0, 0),
    ("1558021", "2823-3", "Potassium", "mmol/L", 3.5, 5.1, 1),
    ("1558022", "2075-0", "Chloride", "mmol/L", 98.0, 107.0, 0),
    ("1558045", "17861-6", "Calcium", "mg/dL", 8.6, 10.3, 1),
    ("1534435", "4548-4", "Hemoglobin A1c", "%", 4.0, 5.6, 1),
    ("1534076", "718-7", "Hemoglobin", "g/dL", 12.0, 17.5, 1),
    ("1534080", "6690-2", "WBC", "10*3/uL", 4.0, 11.0, 1),
    ("1534088", "777-3", "Platelets", "10*3/uL", 150.0, 400.0, 0),
    ("1558390", "2093-3", "Cholesterol", "mg/dL", 125.0, 200.0, 0),
    ("1558391", "2571-8", "Triglycerides", "mg/dL", 40.0, 150.0, 0),
    ("1558393", "2085-9", "HDL Cholesterol", "mg/dL", 40.0, 80.0, 0),
    ("1558412", "3016-3", "TSH", "m[IU]/L", 0.4, 4.0, 2),
)
# Lab panels for DiagnosticReport: (LOINC, name, Epic procedure code)
LAB_PANELS: tuple[tuple[str, str, str], ...] = (
    ("24323-8", "Comprehensive metabolic panel", "LAB7"),
    ("58410-2", "CBC panel - Blood by Automated count", "LAB2"),
    ("57698-3", "Lipid panel with direct LDL", "LAB33"),
    ("4548-4", "Hemoglobin A1c", "LAB240"),
)

SMOKING: tuple[tuple[str, str], ...] = (
    ("266919005", "Never smoker"),
    ("8517006", "Former smoker"),
    ("449868002", "Current every day smoker"),
)

# --- conditions: (SNOMED, ICD-10-CM, text) ---------------------------------------------------------------------
CONDITIONS: tuple[tuple[str, str, str], ...] = (
    ("38341003", "I10", "Essential hypertension"),
    ("44054006", "E11.9", "Type 2 diabetes mellitus without complications"),
    ("55822004", "E78.5", "Hyperlipidemia"),
    ("195967001", "J45.909", "Asthma"),
    ("35489007", "F32.9", "Depression"),
    ("197480006", "F41.9", "Anxiety disorder"),
    ("40930008", "E03.9", "Hypothyroidism"),
    ("235595009", "K21.9", "Gastroesophageal reflux disease"),
    ("279039007", "M54.50", "Low back pain"),
    ("37796009", "G43.909", "Migraine"),
    ("414916001", "E66.9", "Obesity"),
    ("68566005", "N39.0", "Urinary tract infection"),
    ("54150009", "J06.9", "Upper respiratory infection"),
    ("396275006", "M19.90", "Osteoarthritis"),
    ("73211009", "E88.9", "Metabolic disorder"),
)

# --- medications: (RxNorm, name, dosage text) -----------------------------------------------------------------
MEDICATIONS: tuple[tuple[str, str, str], ...] = (
    ("314076", "lisinopril 10 MG Oral Tablet", "Take 1 tablet by mouth daily."),
    ("860975", "metformin 500 MG Oral Tablet", "Take 1 tablet by mouth twice daily with meals."),
    ("617312", "atorvastatin 20 MG Oral Tablet", "Take 1 tablet by mouth at bedtime."),
    ("745679", "albuterol 90 MCG/ACTUATION inhaler", "Inhale 2 puffs every 4 hours as needed."),
    ("312938", "sertraline 50 MG Oral Tablet", "Take 1 tablet by mouth daily."),
    ("966247", "levothyroxine 0.05 MG Oral Tablet", "Take 1 tablet by mouth every morning."),
    ("198211", "omeprazole 20 MG Delayed Release Capsule", "Take 1 capsule by mouth daily."),
    ("310965", "ibuprofen 200 MG Oral Tablet", "Take 1 tablet by mouth every 6 hours as needed."),
    ("308136", "amlodipine 5 MG Oral Tablet", "Take 1 tablet by mouth daily."),
    ("197361", "amoxicillin 500 MG Oral Capsule", "Take 1 capsule by mouth three times daily."),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet", "Take 1 tablet by mouth daily."),
    ("1049621", "oxycodone 5 MG Oral Tablet", "Take 1 tablet by mouth every 6 hours as needed."),
)

# --- allergies: (SNOMED substance, text, category, reaction SNOMED, reaction text) ------------------------------
ALLERGIES: tuple[tuple[str, str, str, str, str], ...] = (
    ("7980", "Penicillins", "medication", "247472004", "Hives"),
    ("227493005", "Cashew nuts", "food", "39579001", "Anaphylaxis"),
    ("256259004", "Pollen", "environment", "49727002", "Cough"),
    ("387406002", "Sulfonamides", "medication", "271807003", "Rash"),
    ("111088007", "Latex", "environment", "247472004", "Hives"),
    ("102263004", "Eggs", "food", "422587007", "Nausea"),
)

# --- immunizations: (CVX, Epic immunization id, text) ----------------------------------------------------------
IMMUNIZATIONS: tuple[tuple[str, str, str], ...] = (
    ("140", "71", "Influenza, seasonal, injectable, preservative free"),
    ("208", "1193", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
    ("115", "52", "Tdap"),
    ("133", "120", "Pneumococcal conjugate PCV 13"),
    ("43", "8", "Hepatitis B, adult"),
    ("121", "166", "Zoster vaccine, live"),
    ("62", "147", "HPV, quadrivalent"),
)

# --- procedures: (CPT, SNOMED, text) ---------------------------------------------------------------------------
PROCEDURES: tuple[tuple[str, str, str], ...] = (
    ("45378", "73761001", "Colonoscopy"),
    ("71046", "399208008", "X-ray of chest, 2 views"),
    ("93000", "29303009", "Electrocardiogram"),
    ("36415", "82078001", "Venipuncture"),
    ("11102", "240977001", "Skin biopsy"),
    ("20610", "12350003", "Joint injection, major joint"),
)

# --- encounters: (Epic enc type code, enc type text, visit type code, visit text, class code, class display) ----
#: Epic codes ``Encounter.class`` in its own system with numeric codes, not HL7's ActCode (docs/epic-notes.md
#: §3.12), so ``Encounter?class=AMB`` names no class Epic knows (§3.4). The sandbox's class for each ActCode
#: kind below: the outpatient ones are codes Epic's sandbox sends, the emergency and inpatient ones ours.
EPIC_ENC_CLASS = "urn:oid:1.2.840.114350.1.72.1.7.7.10.696784.13260"
EPIC_CLASSES: dict[str, tuple[str, str]] = {
    "AMB": ("4", "HOV"),
    "VR": ("13", "Support OP Encounter"),
    "EMER": ("103", "Emergency"),
    "IMP": ("101", "Inpatient"),
}
ENCOUNTER_TYPES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("101", "Office Visit", "1001", "Established Patient", "AMB", "ambulatory"),
    ("101", "Office Visit", "1000", "New Patient", "AMB", "ambulatory"),
    ("50", "Appointment", "1003", "Follow Up", "AMB", "ambulatory"),
    ("3", "Hospital Encounter", "2501", "Emergency", "EMER", "emergency"),
    ("70", "Telemedicine", "1020", "Video Visit", "VR", "virtual"),
    ("3", "Hospital Encounter", "2500", "Admission", "IMP", "inpatient encounter"),
)

# --- documents: (Epic note type code, text) --------------------------------------------------------------------
NOTE_TYPES: tuple[tuple[str, str], ...] = (
    ("1", "Progress Notes"),
    ("4", "H&P"),
    ("5", "Discharge Summary"),
    ("6", "Consults"),
    ("10", "Patient Instructions"),
)

FAMILY_NAMES = (
    "Garcia", "Nguyen", "Smith", "Johnson", "Okafor", "Kowalski", "Haddad", "Tanaka", "Silva", "Murphy",
    "Patel", "Andersen", "Rossi", "Dubois", "Cohen", "Kim", "Ivanova", "Mensah", "Lopez", "Fischer",
)  # fmt: skip
GIVEN_FEMALE = ("Ana", "Grace", "Mei", "Amara", "Olivia", "Sofia", "Priya", "Hannah", "Leila", "Nora", "Ruth")
GIVEN_MALE = ("Liam", "Kenji", "Mateo", "Omar", "Noah", "Felix", "Arjun", "Samuel", "Tomas", "Kwame", "Ivan")
STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Park Rd", "Lake St", "Hill Ct", "River Way")
CITIES = (("Madison", "WI", "53703"), ("Verona", "WI", "53593"), ("Middleton", "WI", "53562"))


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """One ``Coding``; ``display`` omitted when None (Epic omits it on some OID codings)."""
    if display is None:
        return {"system": system, "code": code}
    return {"system": system, "code": code, "display": display}


def quantity(value: float, unit: str) -> dict[str, Any]:
    """A UCUM ``Quantity``."""
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}
