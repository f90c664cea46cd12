//! DNS lookups (MX with A/AAAA fallback, TXT, CNAME, A) — being written.
