//! SMTP reply classification, DSN/ARF parsing and VERP tags (see issue 6). Nothing here yet.
