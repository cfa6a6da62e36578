//! Latency of one task submission through the api function, against the AWS emulator (moto):
//! API Gateway v2 event JSON → `lambda_http`'s adapter (what `lambda_http::run` calls) → the
//! router → key lookup (DynamoDB GetItem) → task insert (PutItem) → job (SQS SendMessage).
//!
//!   cargo bench -p easel-fn-api --bench submit -- [--requests N]
//!
//! The figures are the emulator's and this machine's, not AWS's: moto is a single-threaded Python
//! server, so they bound easel's own overhead from above. See docs/benchmarks.md.

use std::time::Instant;

use easel_core::keys::create_key;
use easel_testkit::lambda::apigw_event;
use easel_testkit::moto::AwsEnv;
use lambda_http::request::LambdaRequest;
use lambda_http::tower::Service as _;
use lambda_http::{Adapter, Context, LambdaEvent};
use serde_json::json;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let requests: usize =
        args.iter().position(|a| a == "--requests").and_then(|i| args.get(i + 1)).map_or(Ok(200), |v| v.parse())?;
    let env = AwsEnv::create(3).await;
    let key = create_key(env.backend.keys.as_ref(), "bench").await?;
    let vars: std::collections::HashMap<String, String> = env.function_env().into_iter().collect();
    let config = easel_fn_api::Config::from_lookup(&|name| vars.get(name).cloned())?;
    let mut adapter = Adapter::from(easel_fn_api::app(&config, &env.sdk));
    let auth = format!("Token {}", key.secret);
    let body = json!({"text_data": "a lighthouse at dusk", "options": {"num_images": 1}});
    let event = apigw_event("POST", "/api/v2/task/async", &[("authorization", &auth)], Some(&body));

    let mut millis = Vec::with_capacity(requests);
    for i in 0..requests + 10 {
        let request: LambdaRequest = serde_json::from_value(event.clone())?;
        let started = Instant::now();
        let response = adapter.call(LambdaEvent::new(request, Context::default())).await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        let response = serde_json::to_value(response)?;
        assert_eq!(response["statusCode"], 200, "{response}");
        if i >= 10 {
            millis.push(elapsed); // the first 10 warm up connections
        }
    }
    millis.sort_by(f64::total_cmp);
    println!(
        "submit through the api function on moto: {requests} requests, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&millis, 50.0),
        percentile(&millis, 90.0),
        percentile(&millis, 99.0),
        millis[millis.len() - 1]
    );
    env.destroy().await;
    Ok(())
}
