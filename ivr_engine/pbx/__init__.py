"""The dev PBX: a Debian sid root with Asterisk 22 and SIPp, run on loopback (see devpbx.py)."""

from ivr_engine.pbx.asterisk_log import AsteriskLog, LogMark, problems
from ivr_engine.pbx.devpbx import DevPbx, PbxStatus, UpResult

__all__ = ["AsteriskLog", "DevPbx", "LogMark", "PbxStatus", "UpResult", "problems"]
