"""The resource types, interactions and search parameters Epic's CapabilityStatement declares.

One table serves two parts: ``/metadata`` lists these (docs/epic-notes.md §3.2), and the search engine treats a
declared parameter as known (it filters, or the sandbox refuses it: it is never dropped in silence) and any
other as unknown (Epic ignores it, docs/epic-notes.md §3.4). Each type's parameters are given in the order of
Epic's statement as ``name:kind`` (``t`` token, ``r`` reference, ``d`` date, ``s`` string, ``n`` number).
"""

from __future__ import annotations

__all__ = [
    "CREATE_TYPES",
    "RESOURCE_TYPES",
    "SEARCH_PARAMS",
    "SEARCHABLE_TYPES",
    "UPDATE_TYPES",
    "US_CORE_PROFILES",
]

_KINDS = {"t": "token", "r": "reference", "d": "date", "s": "string", "n": "number"}

_DECLARED: dict[str, str] = {
    "Account": "_count:n _id:t",
    "AdverseEvent": (
        "research-subject:r seriousness:t study:r subject:r _count:n _id:t actuality:t category:t date:d "
        "event:t location:r recorder:r resultingcondition:r severity:t substance:r"
    ),
    "AllergyIntolerance": (
        "clinical-status:t patient:r _count:n _id:t asserter:r category:t code:t criticality:t date:d "
        "identifier:t last-date:d manifestation:t onset:d recorder:r route:t severity:t type:t "
        "verification-status:t"
    ),
    "Appointment": (
        "date:d identifier:t onlyscannable:t patient:r service-category:t status:t _count:n _id:t actor:r "
        "appointment-type:t based-on:r location:r part-status:t practitioner:r reason-code:t "
        "reason-reference:r service-type:t slot:r specialty:t supporting-info:r"
    ),
    "Binary": "_count:n _id:t",
    "BodyStructure": "identifier:t location:t morphology:t patient:r subject:r _count:n _id:t",
    "CarePlan": (
        "activity-date:d category:t encounter:r part-of:r patient:r status:t subject:r _count:n _id:t "
        "activity-code:t activity-reference:r based-on:r care-team:r condition:r date:d goal:r identifier:t "
        "instantiates-canonical:r intent:t performer:r replaces:r"
    ),
    "CareTeam": (
        "patient:r status:t subject:r _count:n _id:t category:t date:d encounter:r identifier:t participant:r"
    ),
    "Claim": "_count:n _id:t",
    "Communication": (
        "based-on:r category:t encounter:r part-of:r patient:r subject:r _count:n _id:t identifier:t "
        "instantiates-canonical:r medium:t received:d recipient:r sender:r sent:d status:t"
    ),
    "Condition": (
        "abatement-date:d category:t clinical-status:t code:t encounter:r onset-date:d patient:r "
        "recorded-date:d subject:r _count:n _id:t abatement-string:s asserter:r body-site:t evidence:t "
        "evidence-detail:r identifier:t onset-info:s severity:t stage:t verification-status:t"
    ),
    "Consent": (
        "category:t patient:r status:t subject:r _count:n _id:t action:t actor:r consentor:r data:r date:d "
        "identifier:t organization:r period:d purpose:t scope:t security-label:t source-reference:r"
    ),
    "Contract": "_count:n _id:t",
    "Coverage": (
        "beneficiary:r patient:r _count:n _id:t class-type:t class-value:s dependent:s identifier:t payor:r "
        "policy-holder:r status:t subscriber:r type:t"
    ),
    "Device": (
        "device-name:s manufacturer:s model:s patient:r udi-carrier:s udi-di:s _count:n _id:t identifier:t "
        "location:r organization:r status:t type:t"
    ),
    "DeviceRequest": (
        "patient:r status:t _count:n _id:t authored-on:d based-on:r code:t device:r encounter:r "
        "event-date:d group-identifier:t identifier:t instantiates-canonical:r insurance:r intent:t "
        "performer:r prior-request:r requester:r subject:r"
    ),
    "DeviceUseStatement": "patient:r subject:r _count:n _id:t device:r identifier:t",
    "DiagnosticReport": (
        "category:t code:t date:d identifier:t patient:r subject:r _count:n _id:t based-on:r conclusion:t "
        "encounter:r issued:d media:r performer:r result:r results-interpreter:r specimen:r status:t"
    ),
    "DocumentReference": (
        "author:r category:t date:d docstatus:t encounter:r patient:r period:d status:t subject:r type:t "
        "_count:n _id:t _lastupdated:d authenticator:r contenttype:t custodian:r description:s event:t "
        "facility:t format:t identifier:t language:t related:r relatesto:r relation:t security-label:t "
        "setting:t"
    ),
    "Encounter": (
        "class:t date:d identifier:t onlyscannable:t patient:r subject:r _count:n _id:t account:r "
        "appointment:r based-on:r diagnosis:r episode-of-care:r location:r location-period:d part-of:r "
        "participant:r participant-type:t practitioner:r reason-code:t reason-reference:r "
        "service-provider:r special-arrangement:t status:t type:t"
    ),
    "Endpoint": "_count:n _id:t",
    "EpisodeOfCare": (
        "patient:r status:t type:t _count:n _id:t care-manager:r condition:r date:d identifier:t "
        "incoming-referral:r organization:r"
    ),
    "ExplanationOfBenefit": (
        "billable-period-start:d created:d identifier:t patient:r service-date:d service-start-date:d "
        "type:t use:t _count:n _id:t care-team:r claim:r coverage:r detail-udi:r disposition:s encounter:r "
        "enterer:r facility:r item-udi:r payee:r procedure-udi:r provider:r status:t subdetail-udi:r"
    ),
    "FamilyMemberHistory": (
        "patient:r _count:n _id:t code:t date:d identifier:t instantiates-canonical:r relationship:t sex:t "
        "status:t"
    ),
    "Flag": "category:t encounter:r patient:r status:t subject:r _count:n _id:t author:r date:d identifier:t",
    "Goal": (
        "category:t lifecycle-status:t patient:r start-date:d subject:r _count:n _id:t achievement-status:t "
        "identifier:t target-date:d"
    ),
    "Group": "_count:n _id:t",
    "ImagingStudy": (
        "identifier:t patient:r subject:r _count:n _id:t basedon:r bodysite:t dicom-class:t encounter:r "
        "endpoint:r instance:t interpreter:r modality:t performer:r reason:t referrer:r series:t started:d "
        "status:t"
    ),
    "Immunization": (
        "date:d patient:r status:t _count:n _id:t identifier:t location:r lot-number:s manufacturer:r "
        "performer:r reaction:r reaction-date:d reason-code:t reason-reference:r series:s status-reason:t "
        "target-disease:t vaccine-code:t"
    ),
    "ImmunizationRecommendation": (
        "patient:r _count:n _id:t date:d identifier:t information:r status:t support:r target-disease:t "
        "vaccine-type:t"
    ),
    "List": (
        "code:t encounter:r identifier:t patient:r subject:r _count:n _id:t date:d empty-reason:t item:r "
        "notes:s source:r status:t title:s"
    ),
    "Location": (
        "type:t _count:n _id:t address:s address-city:s address-country:s address-postalcode:s "
        "address-state:s address-use:t endpoint:r identifier:t name:s operational-status:t organization:r "
        "partof:r status:t"
    ),
    "Measure": "_count:n _id:t",
    "MeasureReport": (
        "epic-group-id:s patient:r subject:r _count:n _id:t _lastupdated:d date:d evaluated-resource:r "
        "identifier:t measure:r period:d reporter:r status:t"
    ),
    "Media": "_count:n _id:t",
    "Medication": "_count:n _id:t",
    "MedicationAdministration": (
        "context:r effective-time:d patient:r performer:r request:r status:t subject:r _count:n _id:t "
        "code:t device:r identifier:t medication:r reason-given:t reason-not-given:t"
    ),
    "MedicationDispense": (
        "category:t patient:r subject:r _count:n _id:t code:t context:r destination:r identifier:t "
        "medication:r performer:r prescription:r receiver:r responsibleparty:r status:t type:t "
        "whenhandedover:d whenprepared:d"
    ),
    "MedicationRequest": (
        "category:t date:d intent:t patient:r status:t subject:r _count:n _id:t authoredon:d code:t "
        "encounter:r identifier:t intended-dispenser:r intended-performer:r intended-performertype:t "
        "medication:r priority:t requester:r"
    ),
    "NutritionOrder": (
        "patient:r _count:n _id:t additive:t datetime:d encounter:r formula:t identifier:t "
        "instantiates-canonical:r oraldiet:t provider:r status:t supplement:t"
    ),
    "Observation": (
        "based-on:r category:t code:t date:d focus:r issued:d patient:r subject:r _count:n _id:t "
        "combo-code:t combo-data-absent-reason:t combo-value-concept:t component-code:t "
        "component-data-absent-reason:t component-value-concept:t data-absent-reason:t derived-from:r "
        "device:r encounter:r has-member:r identifier:t method:t part-of:r performer:r specimen:r status:t "
        "value-concept:t value-date:d value-string:s"
    ),
    "Organization": "_count:n _id:t",
    "Patient": (
        "address:s address-city:s address-postalcode:s address-state:s birthdate:d doc-type:t family:s "
        "gender:t given:s identifier:t legal-sex:t name:s own-name:s own-prefix:s partner-name:s "
        "partner-prefix:s telecom:t _count:n _id:t active:t address-country:s address-use:t death-date:d "
        "email:t general-practitioner:r language:t link:r organization:r phone:t phonetic:s"
    ),
    "Practitioner": (
        "address:s address-city:s address-postalcode:s address-state:s family:s given:s identifier:t name:s "
        "_count:n _id:t active:t address-country:s address-use:t communication:t email:t gender:t phone:t "
        "phonetic:s telecom:t"
    ),
    "PractitionerRole": (
        "email:t identifier:t location:r organization:r phone:t practitioner:r role:t specialty:t telecom:t "
        "_count:n _id:t active:t date:d endpoint:r service:r"
    ),
    "Procedure": (
        "category:t code:t date:d identifier:t patient:r subject:r _count:n _id:t based-on:r encounter:r "
        "instantiates-canonical:r location:r part-of:r performer:r reason-code:t reason-reference:r "
        "status:t"
    ),
    "Questionnaire": "_count:n _id:t",
    "QuestionnaireResponse": (
        "encounter:r patient:r subject:r _count:n _id:t author:r authored:d based-on:r identifier:t "
        "part-of:r questionnaire:r source:r status:t"
    ),
    "RelatedPerson": "_count:n _id:t",
    "RequestGroup": "_count:n _id:t",
    "ResearchStudy": (
        "identifier:t status:t _count:n _id:t category:t date:d focus:t keyword:t location:t partof:r "
        "principalinvestigator:r protocol:r site:r sponsor:r title:s"
    ),
    "ResearchSubject": "patient:r status:t study:r _count:n _id:t date:d identifier:t",
    "ServiceRequest": (
        "authored:d category:t code:t encounter:r identifier:t onlyscannable:t patient:r requester:r "
        "status:t subject:r _count:n _id:t based-on:r body-site:t instantiates-canonical:r intent:t "
        "occurrence:d performer:r performer-type:t priority:t replaces:r requisition:t specimen:r"
    ),
    "Specimen": "_count:n _id:t",
    "Substance": "_count:n _id:t",
    "Task": (
        "code:t encounter:r focus:r patient:r status:t subject:r _count:n _id:t authored-on:d based-on:r "
        "business-status:t group-identifier:t identifier:t intent:t modified:d owner:r part-of:r "
        "performer:t period:d priority:t requester:r"
    ),
}

#: type -> (name, FHIR search parameter type) in the order Epic's statement lists them.
SEARCH_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    rtype: tuple((name, _KINDS[kind]) for name, _, kind in (p.rpartition(":") for p in text.split()))
    for rtype, text in _DECLARED.items()
}
#: Types with ``search-type``: every type but ConceptMap, Provenance and ValueSet (read only).
SEARCHABLE_TYPES: frozenset[str] = frozenset(SEARCH_PARAMS)
#: Epic's 59 types (February 2026): any other first path segment is Epic's IIS HTML 404 (docs/epic-notes.md
#: §3.7). HealthcareService, InsurancePlan and MedicationStatement are R4 types Epic does not serve.
RESOURCE_TYPES: frozenset[str] = SEARCHABLE_TYPES | {"ConceptMap", "Provenance", "ValueSet"}
#: docs/epic-notes.md §3.2: the 11 types with ``create`` and the 7 with ``update``; nothing else is writable.
CREATE_TYPES: frozenset[str] = frozenset(
    {"AllergyIntolerance", "BodyStructure", "Communication", "ConceptMap", "Condition", "DocumentReference",
     "Observation", "Patient", "Procedure", "QuestionnaireResponse", "ServiceRequest"}
)  # fmt: skip
UPDATE_TYPES: frozenset[str] = frozenset(
    {"BodyStructure", "DiagnosticReport", "DocumentReference", "Observation", "Procedure", "ServiceRequest",
     "Task"}
)  # fmt: skip
#: The US Core 6.1.0 profiles Epic names per type (``supportedProfile``).
US_CORE_PROFILES: dict[str, tuple[str, ...]] = {
    "AllergyIntolerance": ("us-core-allergyintolerance",),
    "CarePlan": ("us-core-careplan",),
    "CareTeam": ("us-core-careteam",),
    "Condition": ("us-core-condition-encounter-diagnosis", "us-core-condition-problems-health-concerns"),
    "Coverage": ("us-core-coverage",),
    "Device": ("us-core-implantable-device",),
    "DiagnosticReport": ("us-core-diagnosticreport-lab", "us-core-diagnosticreport-note"),
    "DocumentReference": ("us-core-documentreference",),
    "Encounter": ("us-core-encounter",),
    "Goal": ("us-core-goal",),
    "Immunization": ("us-core-immunization",),
    "Medication": ("us-core-medication",),
    "MedicationDispense": ("us-core-medicationdispense",),
    "MedicationRequest": ("us-core-medicationrequest",),
    "Observation": (
        "head-occipital-frontal-circumference-percentile", "pediatric-bmi-for-age", "pediatric-weight-for-height",
        "us-core-blood-pressure", "us-core-bmi", "us-core-body-height", "us-core-body-temperature",
        "us-core-body-weight", "us-core-head-circumference", "us-core-heart-rate",
        "us-core-observation-clinical-result", "us-core-observation-lab", "us-core-observation-occupation",
        "us-core-observation-pregnancyintent", "us-core-observation-pregnancystatus",
        "us-core-observation-screening-assessment", "us-core-observation-sexual-orientation",
        "us-core-pulse-oximetry", "us-core-respiratory-rate", "us-core-simple-observation",
        "us-core-smokingstatus", "us-core-vital-signs",
    ),
    "Organization": ("us-core-organization",),
    "Patient": ("us-core-patient",),
    "Practitioner": ("us-core-practitioner",),
    "PractitionerRole": ("us-core-practitionerrole",),
    "Procedure": ("us-core-procedure",),
    "Provenance": ("us-core-provenance",),
    "RelatedPerson": ("us-core-relatedperson",),
    "ServiceRequest": ("us-core-servicerequest",),
    "Specimen": ("us-core-specimen",),
}  # fmt: skip
