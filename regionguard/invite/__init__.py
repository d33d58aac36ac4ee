"""`regionguard invite`: the dial-in numbers, room-connector (CRC) addresses, SIP URIs and meeting
links of a Zoom meeting invitation, checked against the policy (Zoom's rules S4 and S5: a
disabled region's dial-in numbers are disabled, its Conference Room Connectors cannot join).

- `labels`: the place a label in an invitation names ("US (New York)", "Amsterdam Netherlands")
  as a country code, from config/invite-labels.yaml and the ISO 3166 names;
- `parse`: pure: text -> items, each with its line and column;
- `formats`: reading plain text, .ics (icalendar) and .eml (email) into texts to parse, and
  writing them back with lines removed;
- `check`: items x engine -> verdicts;
- `fix`: which lines of a text to remove so only allowed entries remain;
- `command`: `regionguard invite`.
"""
