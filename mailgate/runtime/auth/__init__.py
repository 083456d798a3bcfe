"""Sender authentication: SPF (pyspf), DKIM and ARC (dkimpy), DMARC (dnspython for the
record, the Public Suffix List for organisational domains), Authentication-Results (authres).

Used by the receiver (SPF at RCPT; DKIM, ARC and DMARC at the end of DATA, where a reject is
still possible without backscatter) and by the scanner (the header, the spam rules, the
quarantine, DKIM signing). Every DNS failure is a ``temperror`` or a ``permerror`` as the RFCs
define them, never a pass.
"""
