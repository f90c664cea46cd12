//! Admission's MIME-aware message transforms (group header/footer, X-Mailer, From) — being written.
