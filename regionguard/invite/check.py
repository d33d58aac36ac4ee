"""An invitation's entries against the policy: Zoom's rules S4 (the Conference Room Connectors of
a disabled region cannot join) and S5 (the dial-in numbers of a disabled region are disabled).

- a dial-in number: its country (from the phone-number library, never from its label) against
  the policy's enabled dial-in countries. A country no Zoom region serves numbers for (the UK,
  France...) is not disabled by any region choice: allowed, and said so;
- a room-connector (H.323/SIP) address: decided by the engine as the proxy would decide a
  connection to it (H.323 on TCP 1720, SIP on UDP 5060): the locator's evidence, never the label;
- a SIP URI: by its host: an address as above; a Zoom name by what its name proves
  (zoomcrc.com proves no region: the address DNS gives at call time is what `regionguard dns`
  and `run` decide);
- a web link: a Zoom host whose name places it (zoom.com.cn) is held to the allowed set.

The label beside an entry ("US (New York)", "(Amsterdam Netherlands)") is a claim: when it names
another country than the evidence, the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from regionguard.core.decision import Action, Engine
from regionguard.core.prefixes import is_address
from regionguard.invite.labels import LabelPlaces
from regionguard.invite.parse import CRC, DIALIN, H323, SIP, URL, Item

ALLOWED, OUTSIDE, NOT_ZOOM = "allowed", "outside", "not-zoom"
H323_PORT, SIP_PORT = 1720, 5060   # the protocols' registered ports (ITU-T H.225.0; RFC 3261)


@dataclass(frozen=True, slots=True)
class Verdict:
    item: Item
    verdict: str                  # ALLOWED | OUTSIDE | NOT_ZOOM
    reason: str
    region: str | None = None     # the Zoom region the evidence places it in
    country: str | None = None    # the country the evidence places it in
    label_country: str | None = None   # the country its label names, if any
    label_agrees: bool | None = None   # None: no label, or a label naming no country

    @property
    def outside(self) -> bool:
        return self.verdict == OUTSIDE

    def to_dict(self) -> dict:
        i = self.item
        return {"kind": i.kind, "value": i.value, "text": i.text, "line": i.line,
                "column": i.column, "label": i.label, "protocol": i.protocol,
                "verdict": self.verdict, "reason": self.reason, "region": self.region,
                "country": self.country, "label_country": self.label_country,
                "label_agrees": self.label_agrees}


class InvitationChecker:
    """Checks items under one policy (an engine) for one client (its policy group)."""

    def __init__(self, engine: Engine, places: LabelPlaces, client: str | None = None) -> None:
        self.engine = engine
        self.places = places
        self.client = client
        policy = engine.policy
        self.enabled_dialin = policy.enabled_dialin_countries(client)
        self.enabled_crc = policy.enabled_crc_regions(client)
        self.dialin_region = {country: code for code, region in policy.catalogue.regions.items()
                              for country in region.dialin_countries}

    def is_crc_host(self, host: str) -> bool:
        return host in self.engine.zoom.crc_domains

    def check(self, item: Item) -> Verdict:
        if item.kind == DIALIN:
            return self._dialin(item)
        if item.kind == CRC:
            return self._address(item, item.value)
        if item.kind == SIP:
            host = item.host or ""
            return self._address(item, host) if is_address(host) else self._name(item, host)
        if item.kind == URL:
            return self._name(item, item.host or "")
        raise ValueError(f"unknown item kind {item.kind!r}")

    # --- S5: dial-in numbers --------------------------------------------------------------------

    def _dialin(self, item: Item) -> Verdict:
        country = item.country
        region = self.dialin_region.get(country or "")
        label_country, agrees, note = self._label(item, country)
        if country in self.enabled_dialin:
            verdict, reason = ALLOWED, (f"a number in {country}: region {region} is allowed, its "
                                        "dial-in numbers stay enabled")
        elif region is not None:
            verdict, reason = OUTSIDE, (f"a number in {country}: region {region} is not allowed "
                                        f"({', '.join(sorted(self.policy_allowed()))}), so Zoom disables "
                                        "its dial-in numbers")
        else:
            verdict, reason = ALLOWED, (f"a number in {country}: no Zoom region serves {country}'s "
                                        "dial-in numbers, so no region choice disables them")
        return Verdict(item, verdict, reason + note, region, country, label_country, agrees)

    # --- S4: room connectors ----------------------------------------------------------------------

    def _address(self, item: Item, address: str) -> Verdict:
        port, transport = (H323_PORT, "tcp") if item.protocol == H323 else (SIP_PORT, "udp")
        d = self.engine.decide_safely(self.client, None, address, port, transport)
        label_country, agrees, note = self._label(item, d.country)
        if d.action is Action.PASS:
            return Verdict(item, NOT_ZOOM, f"not Zoom's ({d.reason}): the policy does not govern it"
                           + note, None, None, label_country, agrees)
        outside = d.blocks or d.would is not None
        verdict = OUTSIDE if outside else ALLOWED
        what = "H.323 TCP 1720" if port == H323_PORT else "SIP UDP 5060"
        reason = f"{what}: {d.action}{f' (would {d.would})' if d.would else ''}: {d.reason}"
        return Verdict(item, verdict, reason + note, d.region, d.country, label_country, agrees)

    def _name(self, item: Item, host: str) -> Verdict:
        zoom = self.engine.zoom
        if not host or not zoom.is_zoom_host(host):
            return Verdict(item, NOT_ZOOM, f"{host or 'no host'} is not a Zoom name")
        loc = self.engine.locator.locate(None, host)
        label_country, agrees, note = self._label(item, loc.country)
        if loc.region is None:
            if item.kind == SIP or self.is_crc_host(host):
                reason = (f"{host} names no region: the room connector's address is found by DNS "
                          "when the call is made; `regionguard dns` and `run` decide that address")
            else:
                reason = f"web link; its host {host} names no region (the meeting's region is "\
                    "chosen when it starts)"
            return Verdict(item, ALLOWED, reason + note, None, loc.country, label_country, agrees)
        allowed = self.enabled_crc if item.kind == SIP else self.policy_allowed()
        if loc.region in allowed and not (loc.region == "CN"
                                          and self.engine.policy.rules_for(self.client).location
                                          == "outside-china"):
            return Verdict(item, ALLOWED, f"{host}: {loc.summary()}; allowed" + note,
                           loc.region, loc.country, label_country, agrees)
        return Verdict(item, OUTSIDE, f"{host}: {loc.summary()}; {loc.region} is not allowed "
                       f"({', '.join(sorted(allowed))})" + note, loc.region, loc.country,
                       label_country, agrees)

    def policy_allowed(self) -> frozenset[str]:
        return self.engine.policy.rules_for(self.client).allowed

    # --- labels -------------------------------------------------------------------------------

    def _label(self, item: Item, evidence_country: str | None) -> tuple[str | None, bool | None, str]:
        """(the label's country, whether it agrees with the evidence, a note for the reason)."""
        claimed = self.places.country(item.label)
        if claimed is None or evidence_country is None:
            return claimed, None, ""
        if claimed == evidence_country:
            return claimed, True, ""
        return claimed, False, (f"; the label {item.label!r} says {claimed}, but the evidence says "
                                f"{evidence_country}")
