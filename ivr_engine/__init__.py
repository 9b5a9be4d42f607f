"""ivr-engine: a telephony-first IVR and ACD engine beside an Asterisk PBX."""

__version__ = "0.1.0"
