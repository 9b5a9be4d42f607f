"""SIP call simulator: scripted callers and agents over the network (pjsua2)."""
