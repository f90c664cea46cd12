//! Setting up a session: TCP connect, optional implicit TLS, greeting, EHLO
//! (HELO fallback), STARTTLS per the encryption mode, AUTH. Opportunistic
//! STARTTLS whose handshake fails is retried once on a fresh plain connection,
//! because a failed handshake leaves the first one unusable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::capabilities::Capabilities;
use super::transport::{Stream, Transport};
use super::{
    ClientSettings, Connection, Credentials, Encryption, Phase, Reply, SessionError, TlsState,
    remote_name, tls,
};

/// What to do about STARTTLS on one connection attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StartTlsPlan {
    Never,
    Required { verify: bool },
    Opportunistic,
}

impl Connection {
    /// TCP connect (TCP_NODELAY), greeting, EHLO (HELO fallback on 5xx to EHLO),
    /// STARTTLS per mode (+ EHLO again), AUTH (PLAIN, else LOGIN) when
    /// credentials are set.
    pub async fn connect(settings: &ClientSettings) -> Result<Connection, SessionError> {
        match settings.encryption {
            Encryption::None | Encryption::Tls => establish(settings, StartTlsPlan::Never).await,
            Encryption::StartTls => {
                let plan = StartTlsPlan::Required {
                    verify: settings.tls_verify,
                };
                establish(settings, plan).await
            }
            Encryption::StartTlsOpportunistic => {
                // A failed handshake, or an answer to STARTTLS that is
                // neither 220 nor a refusal (a 250: the session's state is
                // unknown), gets a fresh plain connection.
                match establish(settings, StartTlsPlan::Opportunistic).await {
                    Err(error) if matches!(error.phase(), Phase::Tls | Phase::StartTls) => {
                        let mut connection = establish(settings, StartTlsPlan::Never).await?;
                        connection.tls = TlsState::PlainAfterTlsFailure(error.to_string());
                        Ok(connection)
                    }
                    other => other,
                }
            }
        }
    }
}

async fn establish(
    settings: &ClientSettings,
    plan: StartTlsPlan,
) -> Result<Connection, SessionError> {
    let timeouts = &settings.timeouts;
    let tcp = Transport::connect(&settings.host, settings.port, timeouts.connect).await?;
    let (stream, tls_state) = if settings.encryption == Encryption::Tls {
        let tls = tls::handshake(tcp, &settings.host, settings.tls_verify, timeouts.tls).await?;
        (Stream::from(tls), TlsState::Implicit)
    } else {
        (Stream::Plain(tcp), TlsState::Plain)
    };
    let mut connection = Connection {
        transport: Transport::new(stream),
        timeouts: timeouts.clone(),
        remote: remote_name(&settings.host, settings.port),
        greeting: String::new(),
        capabilities: Capabilities::default(),
        tls: tls_state,
        broken: false,
    };
    connection.greeting = connection.read_greeting().await?;
    connection.capabilities = connection.hello(&settings.helo_name).await?;
    if plan != StartTlsPlan::Never {
        connection = connection.start_tls(settings, plan).await?;
    }
    if let Some(credentials) = &settings.auth {
        connection.authenticate(credentials).await?;
    }
    Ok(connection)
}

impl Connection {
    /// Reads a reply and turns a 421 (service closing) into an error: after it
    /// the server closes, whatever command it answered.
    pub(super) async fn read(&mut self, phase: Phase) -> Result<Reply, SessionError> {
        let reply = self
            .transport
            .read_reply(phase, self.timeouts.for_phase(phase))
            .await?;
        check_not_closing(phase, reply)
    }

    /// Sends one command line and reads its reply.
    pub(super) async fn command(
        &mut self,
        phase: Phase,
        line: &str,
    ) -> Result<Reply, SessionError> {
        let after = self.timeouts.for_phase(phase);
        self.transport.send_line(phase, after, line).await?;
        self.read(phase).await
    }

    async fn read_greeting(&mut self) -> Result<String, SessionError> {
        let reply = self.read(Phase::Greeting).await?;
        expect_code(Phase::Greeting, reply, 220).map(|reply| reply.text)
    }

    /// EHLO, or HELO when the server refuses EHLO permanently (old servers).
    async fn hello(&mut self, helo_name: &str) -> Result<Capabilities, SessionError> {
        let phase = Phase::Ehlo;
        let after = self.timeouts.ehlo;
        self.transport
            .send_line(phase, after, &format!("EHLO {helo_name}"))
            .await?;
        let ehlo = self.transport.read_reply_with_lines(phase, after).await?;
        let reply = check_not_closing(phase, ehlo.reply)?;
        if reply.is_positive() {
            return Ok(Capabilities::from_ehlo_lines(
                ehlo.lines.iter().skip(1).map(String::as_str),
            ));
        }
        if !reply.is_permanent() {
            return Err(SessionError::Rejected { phase, reply });
        }
        let helo = self.command(phase, &format!("HELO {helo_name}")).await?;
        expect_positive(phase, helo)?;
        Ok(Capabilities::default())
    }

    /// Upgrades with STARTTLS and says EHLO again (RFC 3207: the server forgets
    /// everything it knew). Returns the connection to use from here on.
    async fn start_tls(
        mut self,
        settings: &ClientSettings,
        plan: StartTlsPlan,
    ) -> Result<Connection, SessionError> {
        let verify = match plan {
            StartTlsPlan::Required { verify } => verify,
            _ => false,
        };
        if !self.capabilities.starttls {
            return match plan {
                StartTlsPlan::Required { .. } => Err(SessionError::Tls {
                    phase: Phase::StartTls,
                    message: "STARTTLS is required but the server does not offer it".to_string(),
                }),
                _ => Ok(self),
            };
        }
        let reply = self.command(Phase::StartTls, "STARTTLS").await?;
        if reply.code != 220 {
            if plan == StartTlsPlan::Opportunistic && !reply.is_positive() {
                // The server only declined; the plain session is intact.
                self.tls = TlsState::PlainAfterTlsFailure(format!("STARTTLS refused: {reply}"));
                return Ok(self);
            }
            return Err(SessionError::Rejected {
                phase: Phase::StartTls,
                reply,
            });
        }
        let tcp = self.transport.into_tcp(Phase::StartTls)?;
        let tls = tls::handshake(tcp, &settings.host, verify, self.timeouts.tls).await?;
        self.transport = Transport::new(Stream::from(tls));
        self.tls = TlsState::StartTls;
        self.capabilities = self.hello(&settings.helo_name).await?;
        Ok(self)
    }

    /// AUTH PLAIN (RFC 4616, initial response) if offered, else AUTH LOGIN.
    async fn authenticate(&mut self, credentials: &Credentials) -> Result<(), SessionError> {
        let phase = Phase::Auth;
        if self.capabilities.offers_auth("PLAIN") {
            let token = format!("\0{}\0{}", credentials.username, credentials.password);
            let reply = self
                .command(phase, &format!("AUTH PLAIN {}", BASE64.encode(token)))
                .await?;
            return expect_code(phase, reply, 235).map(drop);
        }
        if self.capabilities.offers_auth("LOGIN") {
            let reply = self.command(phase, "AUTH LOGIN").await?;
            expect_code(phase, reply, 334)?;
            let reply = self
                .command(phase, &BASE64.encode(&credentials.username))
                .await?;
            expect_code(phase, reply, 334)?;
            let reply = self
                .command(phase, &BASE64.encode(&credentials.password))
                .await?;
            return expect_code(phase, reply, 235).map(drop);
        }
        Err(SessionError::Protocol {
            phase,
            message: format!(
                "credentials are set but the server offers no AUTH PLAIN or LOGIN (offers: {:?})",
                self.capabilities.auth_mechanisms
            ),
        })
    }
}

pub(super) fn check_not_closing(phase: Phase, reply: Reply) -> Result<Reply, SessionError> {
    if reply.code == 421 {
        Err(SessionError::Rejected { phase, reply })
    } else {
        Ok(reply)
    }
}

fn expect_code(phase: Phase, reply: Reply, code: u16) -> Result<Reply, SessionError> {
    if reply.code == code {
        Ok(reply)
    } else {
        Err(SessionError::Rejected { phase, reply })
    }
}

fn expect_positive(phase: Phase, reply: Reply) -> Result<Reply, SessionError> {
    if reply.is_positive() {
        Ok(reply)
    } else {
        Err(SessionError::Rejected { phase, reply })
    }
}
