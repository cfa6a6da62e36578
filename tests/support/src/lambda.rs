//! Real Lambda event JSON for the function handlers: API Gateway HTTP API (payload v2) requests
//! and SQS batches, built from the captured examples in `tests/fixtures/events/`, plus a local
//! HTTP receiver for callbacks.

use std::sync::{Arc, Mutex};

use aws_lambda_events::event::sqs::SqsEvent;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::workspace_root;

fn fixture(name: &str) -> Value {
    let path = workspace_root().join("tests/fixtures/events").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// An API Gateway v2 event for `method path` with these headers and JSON body.
pub fn apigw_event(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Value {
    let mut event = fixture("apigw-v2-hive-submit.json");
    event["rawPath"] = path.into();
    event["requestContext"]["http"]["method"] = method.into();
    event["requestContext"]["http"]["path"] = path.into();
    let hdrs = event["headers"].as_object_mut().unwrap();
    hdrs.remove("authorization");
    for (k, v) in headers {
        hdrs.insert((*k).to_owned(), (*v).into());
    }
    match body {
        Some(body) => {
            let text = body.to_string();
            hdrs.insert("content-length".into(), text.len().to_string().into());
            event["body"] = text.into();
        }
        None => {
            hdrs.remove("content-length");
            hdrs.remove("content-type");
            event["body"] = Value::Null;
        }
    }
    event
}

/// One record of an SQS event as Lambda's event source mapping delivers it.
#[derive(Debug, Clone)]
pub struct SqsRecord {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    pub receive_count: u32,
}

pub fn sqs_event(records: &[SqsRecord]) -> SqsEvent {
    let template = fixture("sqs-event.json")["Records"][0].clone();
    let records: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut record = template.clone();
            record["messageId"] = r.message_id.clone().into();
            record["receiptHandle"] = r.receipt.clone().into();
            record["body"] = r.body.clone().into();
            record["attributes"]["ApproximateReceiveCount"] = r.receive_count.to_string().into();
            record
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

/// A callback received by [`CallbackReceiver`].
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
    /// The body's bytes as sent (what the signature covers).
    pub raw: Vec<u8>,
}

/// An HTTP server on 127.0.0.1 that records every POST and answers with a chosen status.
#[derive(Debug, Clone)]
pub struct CallbackReceiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<StatusCode>>,
    script: Arc<Mutex<std::collections::VecDeque<Scripted>>>,
}

/// One scripted answer of a [`CallbackReceiver`]: a status, an optional `Retry-After` (seconds),
/// and how long to wait before answering.
#[derive(Debug, Clone, Copy)]
pub struct Scripted {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub delay: std::time::Duration,
}

impl Scripted {
    pub fn status(status: StatusCode) -> Scripted {
        Scripted { status, retry_after: None, delay: std::time::Duration::ZERO }
    }
}

impl CallbackReceiver {
    pub async fn start() -> CallbackReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/easel", listener.local_addr().unwrap());
        let receiver = CallbackReceiver {
            url,
            received: Arc::new(Mutex::new(Vec::new())),
            answer: Arc::new(Mutex::new(StatusCode::NO_CONTENT)),
            script: Arc::new(Mutex::new(std::collections::VecDeque::new())),
        };
        let app = axum::Router::new().route("/hooks/easel", axum::routing::post(record)).with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    /// The status later callbacks get.
    pub fn answer_with(&self, status: StatusCode) {
        *self.answer.lock().unwrap() = status;
    }

    /// The next callbacks get these answers, in order; later ones the status of [`answer_with`].
    pub fn script(&self, answers: &[Scripted]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record(
    State(r): State<CallbackReceiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let raw = body.to_vec();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.received.lock().unwrap().push(Received { headers, body, raw });
    let scripted = r.script.lock().unwrap().pop_front();
    let answer = scripted.unwrap_or_else(|| Scripted::status(*r.answer.lock().unwrap()));
    tokio::time::sleep(answer.delay).await;
    match answer.retry_after {
        Some(secs) => (answer.status, [(axum::http::header::RETRY_AFTER, secs.to_string())]).into_response(),
        None => answer.status.into_response(),
    }
}
