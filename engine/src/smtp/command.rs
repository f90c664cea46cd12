//! Parsing of one SMTP command line (RFC 5321 section 4.1) into a `Command`.
//!
//! The connection handler reads a line and hands it here; everything the
//! client can get wrong in a command comes back as a `Reply` ready to send,
//! so the handler never has to invent error texts.

use crate::values::{Reply, mailbox};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: String,
        params: MailParams,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// Parses a command line without its CRLF.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "Command line is not valid UTF-8"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line.trim_end(), ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => Ok(Command::Ehlo(domain_arg(rest, "EHLO")?)),
        "HELO" => Ok(Command::Helo(domain_arg(rest, "HELO")?)),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(rest, Command::Data, "DATA"),
        "RSET" => no_args(rest, Command::Rset, "RSET"),
        "QUIT" => no_args(rest, Command::Quit, "QUIT"),
        "STARTTLS" => no_args(rest, Command::StartTls, "STARTTLS"),
        "NOOP" => Ok(Command::Noop),
        "VRFY" | "EXPN" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "AUTH" => parse_auth(rest),
        "" => Err(Reply::new(500, "5.5.2", "Empty command line")),
        _ => Err(Reply::new(
            500,
            "5.5.1",
            format!(
                "Command `{}` not recognised",
                verb.chars().take(20).collect::<String>()
            ),
        )),
    }
}

fn no_args(rest: &str, command: Command, verb: &str) -> Result<Command, Reply> {
    if rest.is_empty() {
        Ok(command)
    } else {
        Err(Reply::new(
            501,
            "5.5.4",
            format!("{verb} takes no arguments"),
        ))
    }
}

fn domain_arg(rest: &str, verb: &str) -> Result<String, Reply> {
    let name = rest.split_whitespace().next().unwrap_or("");
    if name.is_empty() {
        return Err(Reply::new(
            501,
            "5.5.4",
            format!("{verb} needs your host name, e.g. `{verb} mail.example.com`"),
        ));
    }
    Ok(name.to_owned())
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let Some(arg) = strip_prefix_ci(rest, "FROM:") else {
        return Err(Reply::new(
            501,
            "5.5.4",
            "Syntax: MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8]",
        ));
    };
    let (path, params_text) = split_path(arg.trim_start())?;
    let mut params = MailParams::default();
    for param in params_text.split_whitespace() {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => {
                params.size = Some(value.parse().map_err(|_| {
                    Reply::new(501, "5.5.4", "SIZE= needs the message size in bytes")
                })?)
            }
            "BODY" => match value.to_ascii_uppercase().as_str() {
                "8BITMIME" => params.eight_bit = true,
                "7BIT" => {}
                _ => {
                    return Err(Reply::new(501, "5.5.4", "BODY= must be 7BIT or 8BITMIME"));
                }
            },
            "SMTPUTF8" => params.smtputf8 = true,
            // AUTH= (RFC 4954) only names who submitted: harmless to ignore.
            "AUTH" => {}
            "RET" | "ENVID" => return Err(dsn_not_offered("MAIL", key)),
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("MAIL parameter `{key}` is not supported"),
                ));
            }
        }
    }
    let from = mailbox(path, true, params.smtputf8)?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let Some(arg) = strip_prefix_ci(rest, "TO:") else {
        return Err(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
    };
    let (path, params_text) = split_path(arg.trim_start())?;
    // RCPT takes no parameter of ours: the first one given is refused.
    if let Some(param) = params_text.split_whitespace().next() {
        let key = param.split('=').next().unwrap_or("").to_ascii_uppercase();
        return Err(if matches!(key.as_str(), "NOTIFY" | "ORCPT") {
            dsn_not_offered("RCPT", &key)
        } else {
            Reply::new(
                555,
                "5.5.4",
                format!("RCPT parameter `{key}` is not supported"),
            )
        });
    }
    // Non-ASCII recipients are checked against SMTPUTF8 by the session,
    // which knows what MAIL said.
    let to = mailbox(path, false, true)?;
    Ok(Command::Rcpt { to })
}

/// A DSN parameter (RFC 3461). We do not offer DSN (EHLO does not list
/// it), and accepting a request for notices we would never send misleads
/// the client: refuse it by name, as RFC 3461 section 4 asks of a server
/// without the extension.
fn dsn_not_offered(verb: &str, key: &str) -> Reply {
    Reply::new(
        555,
        "5.5.4",
        format!(
            "{verb} parameter `{key}` is not supported: this server does not offer DSN, send without RET, ENVID, NOTIFY and ORCPT"
        ),
    )
}

fn parse_auth(rest: &str) -> Result<Command, Reply> {
    let mut parts = rest.split_whitespace();
    let mechanism = parts
        .next()
        .ok_or_else(|| Reply::new(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))?
        .to_ascii_uppercase();
    let initial = parts.next().map(str::to_owned);
    Ok(Command::Auth { mechanism, initial })
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Splits `<path> params` into the path without brackets and the rest.
/// Brackets are optional, as Postfix accepts, but a path must not contain spaces.
fn split_path(arg: &str) -> Result<(&str, &str), Reply> {
    if let Some(inner) = arg.strip_prefix('<') {
        let end = inner
            .find('>')
            .ok_or_else(|| Reply::new(501, "5.1.7", "Address is missing its closing `>`"))?;
        Ok((&inner[..end], inner[end + 1..].trim()))
    } else {
        let end = arg.find(' ').unwrap_or(arg.len());
        Ok((&arg[..end], arg[end..].trim()))
    }
}

/// Validates a mailbox (`local@domain`), dropping an obsolete source route.
fn mailbox(path: &str, null_allowed: bool, utf8_allowed: bool) -> Result<String, Reply> {
    let path = match path.rfind(':') {
        Some(i) if path.starts_with('@') => &path[i + 1..],
        _ => path,
    };
    if path.is_empty() {
        return if null_allowed {
            Ok(String::new())
        } else {
            Err(Reply::new(501, "5.1.3", "A recipient address is required"))
        };
    }
    if !utf8_allowed && !path.is_ascii() {
        return Err(Reply::new(
            553,
            "5.6.7",
            "Non-ASCII address needs the SMTPUTF8 parameter",
        ));
    }
    mailbox::check(path, true)
        .map_err(|why| Reply::new(501, "5.1.3", format!("Bad address syntax: {why}")))?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line.as_bytes()).unwrap()
    }
    fn err(line: &str) -> Reply {
        parse(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            ok("ehlo client.example"),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(ok("QUIT"), Command::Quit);
        assert_eq!(ok("noop whatever"), Command::Noop);
    }

    #[test]
    fn mail_from_with_params() {
        let c = ok("MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME");
        let Command::Mail { from, params } = c else {
            panic!()
        };
        assert_eq!(from, "a@example.com");
        assert_eq!(params.size, Some(1000));
        assert!(params.eight_bit);
        assert_eq!(
            ok("mail from: <>"),
            Command::Mail {
                from: String::new(),
                params: MailParams::default()
            }
        );
        assert_eq!(
            ok("MAIL FROM:<@relay.example:a@example.com>"),
            Command::Mail {
                from: "a@example.com".into(),
                params: MailParams::default()
            }
        );
    }

    #[test]
    fn bad_commands_get_actionable_replies() {
        assert_eq!(err("MAIL <a@b.c>").code, 501);
        assert_eq!(err("RCPT TO:<>").enhanced, "5.1.3");
        assert_eq!(err("RCPT TO:<no-at-sign>").code, 501);
        assert_eq!(err("RCPT TO:<a@b.c").code, 501);
        assert_eq!(err("MAIL FROM:<a@b.c> SIZE=big").code, 501);
        assert_eq!(err("MAIL FROM:<a@b.c> FOO=1").code, 555);
        assert_eq!(err("RCPT TO:<a@b.c> FOO=1").code, 555);
        assert_eq!(err("DATA now").code, 501);
        assert_eq!(err("EHLO").code, 501);
        assert_eq!(err("FROB").enhanced, "5.5.1");
        assert_eq!(err("MAIL FROM:<jörg@example.de>").code, 553);
        assert!(parse(b"\xff\xfe").is_err());
        let long = format!("RCPT TO:<{}@example.com>", "x".repeat(65));
        assert_eq!(err(&long).code, 501);
    }

    #[test]
    fn dsn_parameters_are_refused_by_name() {
        for (line, name) in [
            ("MAIL FROM:<a@b.c> RET=HDRS", "RET"),
            ("MAIL FROM:<a@b.c> SIZE=10 ENVID=x1", "ENVID"),
            ("RCPT TO:<a@b.c> NOTIFY=NEVER", "NOTIFY"),
            ("RCPT TO:<a@b.c> ORCPT=rfc822;a@b.c", "ORCPT"),
        ] {
            let reply = err(line);
            assert_eq!((reply.code, reply.enhanced), (555, "5.5.4"), "{line}");
            assert!(reply.text.contains(&format!("`{name}`")), "{reply}");
            assert!(reply.text.contains("DSN"), "{reply}");
        }
        assert!(parse(b"MAIL FROM:<a@b.c> AUTH=<>").is_ok());
    }

    #[test]
    fn utf8_sender_with_smtputf8() {
        let c = ok("MAIL FROM:<jörg@example.de> SMTPUTF8");
        assert!(matches!(
            c,
            Command::Mail {
                params: MailParams { smtputf8: true, .. },
                ..
            }
        ));
    }

    #[test]
    fn auth_with_initial_response() {
        assert_eq!(
            ok("AUTH PLAIN AGFwcABzZWNyZXQ="),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFwcABzZWNyZXQ=".into())
            }
        );
        assert_eq!(
            ok("auth login"),
            Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            }
        );
    }
}
