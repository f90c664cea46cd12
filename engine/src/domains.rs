//! Sender domains: DNS records from templates, verification — being written.
