"""The IEEE 2030.5-2018 + CSIP-AUS resources derlink exchanges, as typed dataclasses.

Field names are the XML local names; field order is the XSD sequence order (base type first). Only
``sep2.base`` helpers appear here, so this module reads as the profile's data dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sep2.base import NS_CSIP, Sep2Object, attribute, element, elements

# --------------------------------------------------------------------------------------------------
# Building blocks


@dataclass(kw_only=True)
class Resource(Sep2Object):
    href: str | None = attribute("anyURI")


@dataclass(kw_only=True)
class SubscribableResource(Resource):
    is_root: ClassVar[bool] = False
    subscribable: int | None = attribute("UInt8")


@dataclass(kw_only=True)
class Link(Sep2Object):
    is_root: ClassVar[bool] = False
    href: str | None = attribute("anyURI", required=True)


@dataclass(kw_only=True)
class ListLink(Link):
    all: int | None = attribute("UInt32")


@dataclass(kw_only=True)
class ListResource(Resource):
    """A paged list: ``all`` is the total, ``results`` the number in this page."""

    is_root: ClassVar[bool] = False
    all: int | None = attribute("UInt32", required=True, required_on_read=False)
    results: int | None = attribute("UInt32", required=True, required_on_read=False)


@dataclass(kw_only=True)
class PolledListResource(ListResource):
    is_root: ClassVar[bool] = False
    pollRate: int | None = attribute("UInt32")


@dataclass(kw_only=True)
class SubscribableList(SubscribableResource):
    is_root: ClassVar[bool] = False
    all: int | None = attribute("UInt32", required=True, required_on_read=False)
    results: int | None = attribute("UInt32", required=True, required_on_read=False)


@dataclass(kw_only=True)
class PolledSubscribableList(SubscribableList):
    is_root: ClassVar[bool] = False
    pollRate: int | None = attribute("UInt32")


@dataclass(kw_only=True)
class IdentifiedObject(Resource):
    is_root: ClassVar[bool] = False
    mRID: str | None = element("HexBinary128", required=True)
    description: str | None = element("String32")
    version: int | None = element("UInt16")


@dataclass(kw_only=True)
class SubscribableIdentifiedObject(SubscribableResource):
    is_root: ClassVar[bool] = False
    mRID: str | None = element("HexBinary128", required=True)
    description: str | None = element("String32")
    version: int | None = element("UInt16")


@dataclass(kw_only=True)
class DateTimeInterval(Sep2Object):
    is_root: ClassVar[bool] = False
    duration: int | None = element("UInt32", required=True)
    start: int | None = element("Int64", required=True)


class _PowerOfTen:
    """Conversions for 2030.5 ``value × 10^multiplier`` quantities."""

    VALUE_TYPE: ClassVar[str] = "Int16"
    value: int | None
    multiplier: int | None

    def to_float(self) -> float:
        return float(self.value or 0) * 10.0 ** (self.multiplier or 0)

    @classmethod
    def from_float(cls, amount: float) -> _PowerOfTen:
        from sep2.power import encode_power_of_ten

        value, multiplier = encode_power_of_ten(amount, cls.VALUE_TYPE)
        return cls(value=value, multiplier=multiplier)  # type: ignore[call-arg]


@dataclass(kw_only=True)
class ActivePower(_PowerOfTen, Sep2Object):
    """Watts as value × 10^multiplier (value Int16)."""

    is_root: ClassVar[bool] = False
    multiplier: int | None = element("Int8", required=True)
    value: int | None = element("Int16", required=True)

    def to_watts(self) -> float:
        return self.to_float()

    @classmethod
    def from_watts(cls, watts: float) -> ActivePower:
        return cls.from_float(watts)  # type: ignore[return-value]


@dataclass(kw_only=True)
class ReactivePower(_PowerOfTen, Sep2Object):
    is_root: ClassVar[bool] = False
    multiplier: int | None = element("Int8", required=True)
    value: int | None = element("Int16", required=True)


@dataclass(kw_only=True)
class UnsignedPowerOfTen(_PowerOfTen, Sep2Object):
    VALUE_TYPE: ClassVar[str] = "UInt16"
    is_root: ClassVar[bool] = False
    multiplier: int | None = element("Int8", required=True)
    value: int | None = element("UInt16", required=True)


@dataclass(kw_only=True)
class ApparentPower(UnsignedPowerOfTen):
    is_root: ClassVar[bool] = False


@dataclass(kw_only=True)
class CurrentRMS(UnsignedPowerOfTen):
    is_root: ClassVar[bool] = False


@dataclass(kw_only=True)
class VoltageRMS(UnsignedPowerOfTen):
    is_root: ClassVar[bool] = False


@dataclass(kw_only=True)
class WattHour(UnsignedPowerOfTen):
    is_root: ClassVar[bool] = False


@dataclass(kw_only=True)
class AmpereHour(UnsignedPowerOfTen):
    is_root: ClassVar[bool] = False


@dataclass(kw_only=True)
class ReactiveSusceptance(UnsignedPowerOfTen):
    is_root: ClassVar[bool] = False


@dataclass(kw_only=True)
class PowerFactor(Sep2Object):
    is_root: ClassVar[bool] = False
    displacement: int | None = element("UInt16", required=True)
    multiplier: int | None = element("Int8", required=True)


@dataclass(kw_only=True)
class PowerFactorWithExcitation(Sep2Object):
    is_root: ClassVar[bool] = False
    displacement: int | None = element("UInt16", required=True)
    excitation: bool | None = element("boolean", required=True)
    multiplier: int | None = element("Int8", required=True)


@dataclass(kw_only=True)
class FixedVar(Sep2Object):
    is_root: ClassVar[bool] = False
    refType: int | None = element("UInt8", required=True)
    value: int | None = element("Int16", required=True)


@dataclass(kw_only=True)
class FreqDroopType(Sep2Object):
    is_root: ClassVar[bool] = False
    dBOF: int | None = element("UInt32", required=True)
    dBUF: int | None = element("UInt32", required=True)
    kOF: int | None = element("UInt16", required=True)
    kUF: int | None = element("UInt16", required=True)
    openLoopTms: int | None = element("UInt16", required=True)


# --------------------------------------------------------------------------------------------------
# Discovery, time, registration


@dataclass(kw_only=True)
class DeviceCapability(Resource):
    pollRate: int | None = attribute("UInt32")
    CustomerAccountListLink: ListLink | None = element("ListLink")
    DemandResponseProgramListLink: ListLink | None = element("ListLink")
    DERProgramListLink: ListLink | None = element("ListLink")
    FileListLink: ListLink | None = element("ListLink")
    MessagingProgramListLink: ListLink | None = element("ListLink")
    PrepaymentListLink: ListLink | None = element("ListLink")
    ResponseSetListLink: ListLink | None = element("ListLink")
    TariffProfileListLink: ListLink | None = element("ListLink")
    TimeLink: Link | None = element("Link")
    UsagePointListLink: ListLink | None = element("ListLink")
    EndDeviceListLink: ListLink | None = element("ListLink")
    MirrorUsagePointListLink: ListLink | None = element("ListLink")
    SelfDeviceLink: Link | None = element("Link")


@dataclass(kw_only=True)
class Time(Resource):
    pollRate: int | None = attribute("UInt32")
    currentTime: int | None = element("Int64", required=True)
    dstEndTime: int | None = element("Int64", required=True)
    dstOffset: int | None = element("Int32", required=True)
    dstStartTime: int | None = element("Int64", required=True)
    localTime: int | None = element("Int64")
    quality: int | None = element("UInt8", required=True)
    tzOffset: int | None = element("Int32", required=True)


@dataclass(kw_only=True)
class EndDevice(SubscribableResource):
    ConfigurationLink: Link | None = element("Link")
    DERListLink: ListLink | None = element("ListLink")
    deviceCategory: str | None = element("HexBinary32")
    DeviceInformationLink: Link | None = element("Link")
    DeviceStatusLink: Link | None = element("Link")
    FileStatusLink: Link | None = element("Link")
    IPInterfaceListLink: ListLink | None = element("ListLink")
    lFDI: str | None = element("HexBinary160")
    LoadShedAvailabilityListLink: ListLink | None = element("ListLink")
    LogEventListLink: ListLink | None = element("ListLink")
    PowerStatusLink: Link | None = element("Link")
    sFDI: int | None = element("UInt40", required=True)
    changedTime: int | None = element("Int64", required=True)
    enabled: bool | None = element("boolean")
    FlowReservationRequestListLink: ListLink | None = element("ListLink")
    FlowReservationResponseListLink: ListLink | None = element("ListLink")
    FunctionSetAssignmentsListLink: ListLink | None = element("ListLink")
    postRate: int | None = element("UInt32")
    RegistrationLink: Link | None = element("Link")
    SubscriptionListLink: ListLink | None = element("ListLink")
    ConnectionPointLink: Link | None = element("Link", ns=NS_CSIP)


@dataclass(kw_only=True)
class EndDeviceList(PolledSubscribableList):
    EndDevice: list[EndDevice] = elements("EndDevice")


@dataclass(kw_only=True)
class Registration(Resource):
    pollRate: int | None = attribute("UInt32")
    dateTimeRegistered: int | None = element("Int64", required=True)
    pIN: int | None = element("UInt32", required=True)


@dataclass(kw_only=True)
class ConnectionPoint(Resource):
    """CSIP-AUS ConnectionPoint: the site's National Metering Identifier (NMI)."""

    xml_namespace: ClassVar[str] = NS_CSIP
    connectionPointId: str | None = element("String32", required=True, ns=NS_CSIP)


@dataclass(kw_only=True)
class DeviceInformation(Resource):
    pollRate: int | None = attribute("UInt32")
    functionsImplemented: str | None = element("HexBinary64")
    lFDI: str | None = element("HexBinary160", required=True)
    mfDate: int | None = element("Int64", required=True)
    mfHwVer: str | None = element("String32", required=True)
    mfID: int | None = element("UInt32", required=True)
    mfInfo: str | None = element("String32")
    mfModel: str | None = element("String32", required=True)
    mfSerNum: str | None = element("String32", required=True)
    primaryPower: int | None = element("UInt8", required=True)
    secondaryPower: int | None = element("UInt8", required=True)
    SupportedLocaleListLink: ListLink | None = element("ListLink")
    swActTime: int | None = element("Int64", required=True)
    swVer: str | None = element("String32", required=True)


# --------------------------------------------------------------------------------------------------
# Function set assignments and DER programs / controls


@dataclass(kw_only=True)
class FunctionSetAssignments(SubscribableResource):
    CustomerAccountListLink: ListLink | None = element("ListLink")
    DemandResponseProgramListLink: ListLink | None = element("ListLink")
    DERProgramListLink: ListLink | None = element("ListLink")
    FileListLink: ListLink | None = element("ListLink")
    MessagingProgramListLink: ListLink | None = element("ListLink")
    PrepaymentListLink: ListLink | None = element("ListLink")
    ResponseSetListLink: ListLink | None = element("ListLink")
    TariffProfileListLink: ListLink | None = element("ListLink")
    TimeLink: Link | None = element("Link")
    UsagePointListLink: ListLink | None = element("ListLink")
    mRID: str | None = element("HexBinary128", required=True)
    description: str | None = element("String32")
    version: int | None = element("UInt16")


@dataclass(kw_only=True)
class FunctionSetAssignmentsList(PolledSubscribableList):
    FunctionSetAssignments: list[FunctionSetAssignments] = elements("FunctionSetAssignments")


@dataclass(kw_only=True)
class DERProgram(SubscribableIdentifiedObject):
    ActiveDERControlListLink: ListLink | None = element("ListLink")
    DefaultDERControlLink: Link | None = element("Link")
    DERControlListLink: ListLink | None = element("ListLink")
    DERCurveListLink: ListLink | None = element("ListLink")
    primacy: int | None = element("UInt8", required=True)


@dataclass(kw_only=True)
class DERProgramList(PolledSubscribableList):
    DERProgram: list[DERProgram] = elements("DERProgram")


@dataclass(kw_only=True)
class DERControlBase(Sep2Object):
    """The control modes of a DERControl or DefaultDERControl, with the CSIP-AUS limits at the end.

    ``opModStorageTargetW`` is the CSIP-AUS v1.3 storage extension: "a target aggregate output, in Watts,
    for one or more storage components within an EndDevice" (+ discharge, - charge). It is optional and
    last in the sequence, so a v1.2 document is still a valid v1.3 one and a control without it is
    unchanged for a v1.2 peer.
    """

    is_root: ClassVar[bool] = False
    opModConnect: bool | None = element("boolean")
    opModEnergize: bool | None = element("boolean")
    opModFixedPFAbsorbW: PowerFactorWithExcitation | None = element("PowerFactorWithExcitation")
    opModFixedPFInjectW: PowerFactorWithExcitation | None = element("PowerFactorWithExcitation")
    opModFixedVar: FixedVar | None = element("FixedVar")
    opModFixedW: int | None = element("Int16")
    opModFreqDroop: FreqDroopType | None = element("FreqDroopType")
    opModFreqWatt: Link | None = element("Link")
    opModHFRTMayTrip: Link | None = element("Link")
    opModHFRTMustTrip: Link | None = element("Link")
    opModHVRTMayTrip: Link | None = element("Link")
    opModHVRTMomentaryCessation: Link | None = element("Link")
    opModHVRTMustTrip: Link | None = element("Link")
    opModLFRTMayTrip: Link | None = element("Link")
    opModLFRTMustTrip: Link | None = element("Link")
    opModLVRTMayTrip: Link | None = element("Link")
    opModLVRTMomentaryCessation: Link | None = element("Link")
    opModLVRTMustTrip: Link | None = element("Link")
    opModMaxLimW: int | None = element("UInt16")
    opModTargetVar: ReactivePower | None = element("ReactivePower")
    opModTargetW: ActivePower | None = element("ActivePower")
    opModVoltVar: Link | None = element("Link")
    opModVoltWatt: Link | None = element("Link")
    opModWattPF: Link | None = element("Link")
    opModWattVar: Link | None = element("Link")
    rampTms: int | None = element("UInt16")
    opModImpLimW: ActivePower | None = element("ActivePower", ns=NS_CSIP)
    opModExpLimW: ActivePower | None = element("ActivePower", ns=NS_CSIP)
    opModGenLimW: ActivePower | None = element("ActivePower", ns=NS_CSIP)
    opModLoadLimW: ActivePower | None = element("ActivePower", ns=NS_CSIP)
    opModStorageTargetW: ActivePower | None = element("ActivePower", ns=NS_CSIP)


@dataclass(kw_only=True)
class EventStatus(Sep2Object):
    """currentStatus: 0 scheduled, 1 active, 2 cancelled, 3 cancelled with randomization, 4 superseded."""

    is_root: ClassVar[bool] = False
    currentStatus: int | None = element("UInt8", required=True)
    dateTime: int | None = element("Int64", required=True)
    potentiallySuperseded: bool | None = element("boolean", required=True)
    potentiallySupersededTime: int | None = element("Int64")
    reason: str | None = element("String192")


@dataclass(kw_only=True)
class DERControl(SubscribableResource):
    replyTo: str | None = attribute("anyURI")
    responseRequired: str | None = attribute("HexBinary8")
    mRID: str | None = element("HexBinary128", required=True)
    description: str | None = element("String32")
    version: int | None = element("UInt16")
    creationTime: int | None = element("Int64", required=True)
    EventStatus: EventStatus | None = element("EventStatus", required=True)
    interval: DateTimeInterval | None = element("DateTimeInterval", required=True)
    randomizeDuration: int | None = element("Int16")
    randomizeStart: int | None = element("Int16")
    DERControlBase: DERControlBase | None = element("DERControlBase", required=True)
    deviceCategory: str | None = element("HexBinary32")


@dataclass(kw_only=True)
class DERControlList(SubscribableList):
    DERControl: list[DERControl] = elements("DERControl")


@dataclass(kw_only=True)
class DefaultDERControl(SubscribableIdentifiedObject):
    DERControlBase: DERControlBase | None = element("DERControlBase", required=True)
    setESDelay: int | None = element("UInt32")
    setESHighFreq: int | None = element("UInt16")
    setESHighVolt: int | None = element("Int16")
    setESLowFreq: int | None = element("UInt16")
    setESLowVolt: int | None = element("Int16")
    setESRampTms: int | None = element("UInt32")
    setESRandomDelay: int | None = element("UInt32")
    setGradW: int | None = element("UInt16")
    setSoftGradW: int | None = element("UInt16")


# --------------------------------------------------------------------------------------------------
# DER information


@dataclass(kw_only=True)
class DER(SubscribableResource):
    AssociatedDERProgramListLink: ListLink | None = element("ListLink")
    AssociatedUsagePointLink: Link | None = element("Link")
    CurrentDERProgramLink: Link | None = element("Link")
    DERAvailabilityLink: Link | None = element("Link")
    DERCapabilityLink: Link | None = element("Link")
    DERSettingsLink: Link | None = element("Link")
    DERStatusLink: Link | None = element("Link")


@dataclass(kw_only=True)
class DERList(PolledListResource):
    DER: list[DER] = elements("DER")


@dataclass(kw_only=True)
class DERCapability(Resource):
    modesSupported: str | None = element("HexBinary32", required=True)
    rtgAbnormalCategory: int | None = element("UInt8")
    rtgMaxA: CurrentRMS | None = element("CurrentRMS")
    rtgMaxAh: AmpereHour | None = element("AmpereHour")
    rtgMaxChargeRateVA: ApparentPower | None = element("ApparentPower")
    rtgMaxChargeRateW: ActivePower | None = element("ActivePower")
    rtgMaxDischargeRateVA: ApparentPower | None = element("ApparentPower")
    rtgMaxDischargeRateW: ActivePower | None = element("ActivePower")
    rtgMaxV: VoltageRMS | None = element("VoltageRMS")
    rtgMaxVA: ApparentPower | None = element("ApparentPower")
    rtgMaxVar: ReactivePower | None = element("ReactivePower")
    rtgMaxVarNeg: ReactivePower | None = element("ReactivePower")
    rtgMaxW: ActivePower | None = element("ActivePower", required=True)
    rtgMaxWh: WattHour | None = element("WattHour")
    rtgMinPFOverExcited: PowerFactor | None = element("PowerFactor")
    rtgMinPFUnderExcited: PowerFactor | None = element("PowerFactor")
    rtgMinV: VoltageRMS | None = element("VoltageRMS")
    rtgNormalCategory: int | None = element("UInt8")
    rtgOverExcitedPF: PowerFactor | None = element("PowerFactor")
    rtgOverExcitedW: ActivePower | None = element("ActivePower")
    rtgReactiveSusceptance: ReactiveSusceptance | None = element("ReactiveSusceptance")
    rtgUnderExcitedPF: PowerFactor | None = element("PowerFactor")
    rtgUnderExcitedW: ActivePower | None = element("ActivePower")
    rtgVNom: VoltageRMS | None = element("VoltageRMS")
    type: int | None = element("UInt8", required=True)
    doeModesSupported: str | None = element("HexBinary8", required=True, ns=NS_CSIP)
    vppModesSupported: str | None = element("HexBinary8", ns=NS_CSIP)  # v1.3: bit 0 opModStorageTargetW


@dataclass(kw_only=True)
class DERSettings(SubscribableResource):
    modesEnabled: str | None = element("HexBinary32")
    setESDelay: int | None = element("UInt32")
    setESHighFreq: int | None = element("UInt16")
    setESHighVolt: int | None = element("Int16")
    setESLowFreq: int | None = element("UInt16")
    setESLowVolt: int | None = element("Int16")
    setESRampTms: int | None = element("UInt32")
    setESRandomDelay: int | None = element("UInt32")
    setGradW: int | None = element("UInt16", required=True)
    setMaxA: CurrentRMS | None = element("CurrentRMS")
    setMaxAh: AmpereHour | None = element("AmpereHour")
    setMaxChargeRateVA: ApparentPower | None = element("ApparentPower")
    setMaxChargeRateW: ActivePower | None = element("ActivePower")
    setMaxDischargeRateVA: ApparentPower | None = element("ApparentPower")
    setMaxDischargeRateW: ActivePower | None = element("ActivePower")
    setMaxV: VoltageRMS | None = element("VoltageRMS")
    setMaxVA: ApparentPower | None = element("ApparentPower")
    setMaxVar: ReactivePower | None = element("ReactivePower")
    setMaxVarNeg: ReactivePower | None = element("ReactivePower")
    setMaxW: ActivePower | None = element("ActivePower", required=True)
    setMaxWh: WattHour | None = element("WattHour")
    setMinPFOverExcited: PowerFactor | None = element("PowerFactor")
    setMinPFUnderExcited: PowerFactor | None = element("PowerFactor")
    setMinV: VoltageRMS | None = element("VoltageRMS")
    setSoftGradW: int | None = element("UInt16")
    setVNom: VoltageRMS | None = element("VoltageRMS")
    setVRef: VoltageRMS | None = element("VoltageRMS")
    setVRefOfs: VoltageRMS | None = element("VoltageRMS")
    updatedTime: int | None = element("Int64", required=True)
    doeModesEnabled: str | None = element("HexBinary8", ns=NS_CSIP)
    vppModesEnabled: str | None = element("HexBinary8", ns=NS_CSIP)  # v1.3: bit 0 opModStorageTargetW
    # v1.3 storage extension: the least energy the storage keeps (its reserve), Wh; STO-02 / STO-05
    setMinWh: WattHour | None = element("WattHour", ns=NS_CSIP)


@dataclass(kw_only=True)
class StatusValue(Sep2Object):
    """A status with the time it was observed (ConnectStatusType, InverterStatusType, ...)."""

    is_root: ClassVar[bool] = False
    dateTime: int | None = element("Int64", required=True)
    value: int | None = element("UInt8", required=True)


@dataclass(kw_only=True)
class ConnectStatus(Sep2Object):
    is_root: ClassVar[bool] = False
    dateTime: int | None = element("Int64", required=True)
    value: str | None = element("HexBinary8", required=True)


@dataclass(kw_only=True)
class ManufacturerStatus(Sep2Object):
    is_root: ClassVar[bool] = False
    dateTime: int | None = element("Int64", required=True)
    value: str | None = element("String6", required=True)


@dataclass(kw_only=True)
class StateOfChargeStatus(Sep2Object):
    """value in hundredths of a percent (PerCent)."""

    is_root: ClassVar[bool] = False
    dateTime: int | None = element("Int64", required=True)
    value: int | None = element("UInt16", required=True)


@dataclass(kw_only=True)
class DERStatus(SubscribableResource):
    alarmStatus: str | None = element("HexBinary32")
    genConnectStatus: ConnectStatus | None = element("ConnectStatus")
    inverterStatus: StatusValue | None = element("StatusValue")
    localControlModeStatus: StatusValue | None = element("StatusValue")
    manufacturerStatus: ManufacturerStatus | None = element("ManufacturerStatus")
    operationalModeStatus: StatusValue | None = element("StatusValue")
    readingTime: int | None = element("Int64", required=True)
    stateOfChargeStatus: StateOfChargeStatus | None = element("StateOfChargeStatus")
    storageModeStatus: StatusValue | None = element("StatusValue")
    storConnectStatus: ConnectStatus | None = element("ConnectStatus")


@dataclass(kw_only=True)
class DERAvailability(SubscribableResource):
    availabilityDuration: int | None = element("UInt32")
    maxChargeDuration: int | None = element("UInt32")
    readingTime: int | None = element("Int64", required=True)
    reserveChargePercent: int | None = element("UInt16")
    reservePercent: int | None = element("UInt16")
    statVarAvail: ReactivePower | None = element("ReactivePower")
    statWAvail: ActivePower | None = element("ActivePower")


# --------------------------------------------------------------------------------------------------
# Metering mirror (telemetry)


@dataclass(kw_only=True)
class ReadingType(Resource):
    accumulationBehaviour: int | None = element("UInt8")
    calorificValue: UnitValue | None = element("UnitValue")
    commodity: int | None = element("UInt8")
    conversionFactor: UnitValue | None = element("UnitValue")
    dataQualifier: int | None = element("UInt8")
    flowDirection: int | None = element("UInt8")
    intervalLength: int | None = element("UInt32")
    kind: int | None = element("UInt8")
    maxNumberOfIntervals: int | None = element("UInt8")
    numberOfConsumptionBlocks: int | None = element("UInt8")
    numberOfTouTiers: int | None = element("UInt8")
    phase: int | None = element("UInt8")
    powerOfTenMultiplier: int | None = element("Int8")
    subIntervalLength: int | None = element("UInt32")
    supplyLimit: int | None = element("UInt48")
    tieredConsumptionBlocks: bool | None = element("boolean")
    uom: int | None = element("UInt8")


@dataclass(kw_only=True)
class UnitValue(Sep2Object):
    is_root: ClassVar[bool] = False
    multiplier: int | None = element("Int8", required=True)
    unit: int | None = element("UInt8", required=True)
    value: int | None = element("Int32", required=True)


@dataclass(kw_only=True)
class Reading(SubscribableResource):
    consumptionBlock: int | None = element("UInt8")
    qualityFlags: str | None = element("HexBinary16")
    timePeriod: DateTimeInterval | None = element("DateTimeInterval")
    touTier: int | None = element("UInt8")
    value: int | None = element("Int48")
    localID: str | None = element("HexBinary16")


@dataclass(kw_only=True)
class MirrorReadingSet(IdentifiedObject):
    timePeriod: DateTimeInterval | None = element("DateTimeInterval", required=True)
    Reading: list[Reading] = elements("Reading")


@dataclass(kw_only=True)
class MirrorMeterReading(IdentifiedObject):
    lastUpdateTime: int | None = element("Int64")
    MirrorReadingSet: list[MirrorReadingSet] = elements("MirrorReadingSet")
    nextUpdateTime: int | None = element("Int64")
    Reading: Reading | None = element("Reading")
    ReadingType: ReadingType | None = element("ReadingType")


@dataclass(kw_only=True)
class MirrorMeterReadingList(ListResource):
    MirrorMeterReading: list[MirrorMeterReading] = elements("MirrorMeterReading")


@dataclass(kw_only=True)
class MirrorUsagePoint(IdentifiedObject):
    roleFlags: str | None = element("HexBinary16", required=True)
    serviceCategoryKind: int | None = element("UInt8", required=True)
    status: int | None = element("UInt8", required=True)
    deviceLFDI: str | None = element("HexBinary160", required=True)
    MirrorMeterReading: list[MirrorMeterReading] = elements("MirrorMeterReading")
    postRate: int | None = element("UInt32")


@dataclass(kw_only=True)
class MirrorUsagePointList(PolledListResource):
    MirrorUsagePoint: list[MirrorUsagePoint] = elements("MirrorUsagePoint")


# --------------------------------------------------------------------------------------------------
# Responses, subscriptions, errors, logs


#: ResponseType values 2030.5 defines (clause 10.10.1, Table 27 and the 252-254 rejections); the rest are
#: reserved and a client may not send them.
RESPONSE_TYPES = frozenset(range(1, 15)) | frozenset(range(252, 255))


@dataclass(kw_only=True)
class Response(Resource):
    """status: 1 received, 2 started, 3 completed, 4 opted out, 6 cancelled, 7 superseded, 252+ rejected."""

    createdDateTime: int | None = element("Int64")
    endDeviceLFDI: str | None = element("HexBinary160", required=True)
    status: int | None = element("UInt8", values=RESPONSE_TYPES)
    subject: str | None = element("HexBinary128", required=True)


@dataclass(kw_only=True)
class DERControlResponse(Response):
    pass


@dataclass(kw_only=True)
class ResponseList(ListResource):
    Response: list[Response] = elements("Response")


@dataclass(kw_only=True)
class ResponseSet(IdentifiedObject):
    ResponseListLink: ListLink | None = element("ListLink")


@dataclass(kw_only=True)
class ResponseSetList(PolledListResource):
    ResponseSet: list[ResponseSet] = elements("ResponseSet")


@dataclass(kw_only=True)
class Condition(Sep2Object):
    is_root: ClassVar[bool] = False
    attributeIdentifier: int | None = element("UInt8", required=True)
    lowerThreshold: int | None = element("Int48", required=True)
    upperThreshold: int | None = element("Int48", required=True)


@dataclass(kw_only=True)
class Subscription(Resource):
    """encoding: 0 application/sep+xml; level: "+S1"; limit: max list entries per notification."""

    subscribedResource: str | None = element("anyURI", required=True)
    Condition: Condition | None = element("Condition")
    encoding: int | None = element("UInt8", required=True)
    level: str | None = element("String16", required=True)
    limit: int | None = element("UInt32", required=True)
    notificationURI: str | None = element("anyURI", required=True)


@dataclass(kw_only=True)
class SubscriptionList(PolledListResource):
    Subscription: list[Subscription] = elements("Subscription")


@dataclass(kw_only=True)
class Notification(Resource):
    """status: 0 default (resource changed), 1 subscription cancelled (no info), 2 resource moved,
    3 subscription cancelled (resource definition changed), 4 resource deleted."""

    subscribedResource: str | None = element("anyURI", required=True)
    newResourceURI: str | None = element("anyURI")
    Resource: Sep2Object | None = element("Resource")
    status: int | None = element("UInt8", required=True)
    subscriptionURI: str | None = element("anyURI", required=True)


@dataclass(kw_only=True)
class Error(Sep2Object):
    """reasonCode: 0 invalid request format, 1 invalid request values, 2 resource limit reached,
    3 conditional subscription field not supported, 4 maximum request frequency exceeded."""

    maxRetryDuration: int | None = element("UInt16")
    reasonCode: int | None = element("UInt16", required=True)


@dataclass(kw_only=True)
class LogEvent(Resource):
    createdDateTime: int | None = element("Int64", required=True)
    details: str | None = element("String32")
    extendedData: int | None = element("UInt32")
    functionSet: int | None = element("UInt8", required=True)
    logEventCode: int | None = element("UInt8", required=True)
    logEventID: int | None = element("UInt16", required=True)
    logEventPEN: int | None = element("UInt32", required=True)
    profileID: int | None = element("UInt8", required=True)


@dataclass(kw_only=True)
class LogEventList(PolledSubscribableList):
    LogEvent: list[LogEvent] = elements("LogEvent")
