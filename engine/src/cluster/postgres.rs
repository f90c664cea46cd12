//! The shared database: one connection per purpose, re-made when it drops,
//! every call bounded by a timeout, schema created by the first node, and
//! LISTEN/NOTIFY turned into a channel of change notices.
//!
//! A node never blocks on PostgreSQL forever: a call that does not answer
//! within [`QUERY_TIMEOUT`] is an error the caller turns into a 4xx (or a
//! retry later), and the next call connects again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one query (or transaction step) may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to re-open a dropped LISTEN connection.
const LISTEN_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the cluster database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the cluster database closed the connection")]
    Closed,
    #[error("the cluster database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Rows that kept changing under a read-then-write (other nodes' writes
    /// racing it); the call may be tried again.
    #[error("the cluster database: {0}")]
    Unsettled(&'static str),
}

impl DbError {
    /// True when the connection died under the call (PostgreSQL restarted,
    /// the backend was terminated): a new connection may well succeed.
    fn connection_lost(&self) -> bool {
        match self {
            DbError::Closed => true,
            DbError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_some_and(|code| {
                        *code == tokio_postgres::error::SqlState::ADMIN_SHUTDOWN
                            || *code == tokio_postgres::error::SqlState::CRASH_SHUTDOWN
                    })
            }
            DbError::Timeout(_) | DbError::Unsettled(_) => false,
        }
    }
}

/// Runs `f` with [`QUERY_TIMEOUT`].
pub async fn timed<T, E>(f: impl Future<Output = Result<T, E>>) -> Result<T, DbError>
where
    DbError: From<E>,
{
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(result) => result.map_err(DbError::from),
        Err(_) => Err(DbError::Timeout(QUERY_TIMEOUT)),
    }
}

/// Opens a connection and drives it on its own task.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result?,
        Err(_) => return Err(DbError::Timeout(CONNECT_TIMEOUT)),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("cluster database connection ended: {e}");
        }
    });
    Ok(client)
}

/// Statements prepared on one connection, for the calls made many times a
/// second. Given SQL text, tokio-postgres prepares an unnamed statement
/// first, which is a second round trip, and PostgreSQL parses and plans the
/// statement again on every call (most of its CPU for a small write). A
/// statement prepared once is called in one round trip and planned once.
/// A statement belongs to its connection: `clear` when that is replaced.
#[derive(Default)]
pub struct Prepared(HashMap<&'static str, Statement>);

impl Prepared {
    /// `sql` prepared on `client`, from the cache or now.
    pub async fn get(&mut self, client: &Client, sql: &'static str) -> Result<Statement, DbError> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = timed(client.prepare(sql)).await?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A connection that is opened on first use and again after it dropped.
pub struct Database {
    url: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl Database {
    pub fn new(url: &str) -> Database {
        Database {
            url: url.to_owned(),
            client: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The open connection, or a new one if there is none or it closed.
    pub async fn client(&self) -> Result<Arc<Client>, DbError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(connect(&self.url).await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `call`, a statement safe to repeat (a read, an upsert), and runs
    /// it once more on a new connection if the open one turns out to have
    /// died under it. The connection's task notices a dead socket only when
    /// it next reads, so without this the first call after a PostgreSQL
    /// restart fails although the database is back, and `sendctl fleet
    /// status` would say "try again" to an operator checking on the restart.
    pub async fn repeatable<T, F, Fut>(&self, call: F) -> Result<T, DbError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let client = self.client().await?;
        match call(client.clone()).await {
            Err(e) if e.connection_lost() => {
                self.forget(&client).await;
                call(self.client().await?).await
            }
            other => other,
        }
    }

    /// Drops `dead` from the slot (if another call has not replaced it yet),
    /// so that the next call connects anew.
    async fn forget(&self, dead: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
            *slot = None;
        }
    }

    /// Creates tables and indexes with `sql` (idempotent statements, such as
    /// `CREATE TABLE IF NOT EXISTS`) under an advisory lock, so that nodes
    /// starting at once do not race on the catalog.
    pub async fn migrate(&self, sql: &str) -> Result<(), DbError> {
        let batch = format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {sql}; COMMIT;");
        let batch = batch.as_str();
        self.repeatable(|client| async move {
            let result = timed(client.batch_execute(batch)).await;
            if result.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            result
        })
        .await
    }
}

/// The advisory lock key the schema is created under ("\0sendeng" in ASCII).
const SCHEMA_LOCK: i64 = 0x0073_656e_6465_6e67;

/// What a LISTEN connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A NOTIFY on `channel` with `payload`.
    Notify { channel: String, payload: String },
    /// The LISTEN connection was (re)opened: notices may have been missed
    /// while it was down, so the receiver reads the whole state again.
    Resync,
}

/// Listens on `channels` for as long as `notices` has a receiver,
/// reconnecting after a failure (each reconnect sends [`Notice::Resync`]).
pub fn listen(url: String, channels: Vec<String>, notices: mpsc::Sender<Notice>) {
    tokio::spawn(async move {
        let mut logged = false;
        while !notices.is_closed() {
            match listen_once(&url, &channels, &notices).await {
                Ok(()) => return,
                Err(e) if !logged => {
                    log::warn!("cluster: LISTEN connection lost ({e}); reconnecting");
                    logged = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(LISTEN_RETRY).await;
        }
    });
}

/// One LISTEN connection, until it fails (Err) or nobody listens (Ok).
async fn listen_once(
    url: &str,
    channels: &[String],
    notices: &mpsc::Sender<Notice>,
) -> Result<(), DbError> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, mut connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result?,
        Err(_) => return Err(DbError::Timeout(CONNECT_TIMEOUT)),
    };
    let (messages_tx, mut messages) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(message)) => {
                    if messages_tx.send(Ok(message)).is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    let _ = messages_tx.send(Err(e));
                    return;
                }
                None => return,
            }
        }
    });
    let statements: String = channels
        .iter()
        .map(|c| format!("LISTEN \"{}\";", c.replace('"', "")))
        .collect();
    let listening = timed(client.batch_execute(&statements)).await;
    if let Err(e) = listening {
        driver.abort();
        return Err(e);
    }
    if notices.send(Notice::Resync).await.is_err() {
        driver.abort();
        return Ok(());
    }
    let result = loop {
        match messages.recv().await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let notice = Notice::Notify {
                    channel: n.channel().to_owned(),
                    payload: n.payload().to_owned(),
                };
                if notices.send(notice).await.is_err() {
                    break Ok(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(DbError::from(e)),
            None => break Err(DbError::Closed),
        }
    };
    driver.abort();
    drop(client);
    result
}
