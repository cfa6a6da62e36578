//! `GET /v1/usage`: what the calling key was charged, per UTC day and in total.
//!
//! Query: `from` and `to`, dates `YYYY-MM-DD`, both included; by default the current month up to
//! today. At most 366 days at once. Only succeeded tasks are charged (see `easel_core::usage`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use easel_core::usage::{DailyUsage, day_text, millicredits_to_credits, parse_day};
use serde_json::{Value, json};
use time::{Date, Duration, OffsetDateTime};

use crate::AppState;
use crate::auth::{Scheme, require_key};
use crate::tasks::NeutralError;

const MAX_DAYS: i64 = 366;

fn day_param(params: &HashMap<String, String>, name: &str) -> Result<Option<Date>, NeutralError> {
    params
        .get(name)
        .map(|text| {
            parse_day(text)
                .ok_or_else(|| NeutralError::invalid(format!("`{name}` must be a date as YYYY-MM-DD (got {text:?})")))
        })
        .transpose()
}

/// The inclusive range of days asked for, validated.
fn range(query: Option<&str>, today: Date) -> Result<(Date, Date), NeutralError> {
    let mut params = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name != "from" && name != "to" {
            return Err(NeutralError::invalid(format!("unknown query parameter `{name}`; allowed: from, to")));
        }
        if params.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(NeutralError::invalid(format!("`{name}` is given more than once")));
        }
    }
    let to = day_param(&params, "to")?.unwrap_or(today);
    let from = day_param(&params, "from")?.unwrap_or_else(|| to.replace_day(1).unwrap_or(to));
    if from > to {
        return Err(NeutralError::invalid(format!("`from` ({}) is after `to` ({})", day_text(from), day_text(to))));
    }
    if to - from >= Duration::days(MAX_DAYS) {
        return Err(NeutralError::invalid(format!("at most {MAX_DAYS} days at once, from `from` to `to`")));
    }
    Ok((from, to))
}

fn totals(days: &[DailyUsage]) -> (u64, u64, u64) {
    days.iter().fold((0, 0, 0), |(t, i, m), d| (t + d.tasks, i + d.images, m + d.millicredits))
}

/// The calling key's charges per UTC day and in total (failed, rejected and canceled tasks cost nothing).
#[utoipa::path(
    get, path = "/v1/usage", tag = "tasks", operation_id = "get_usage",
    security(("bearer" = []), ("hive_token" = []), ("basic_key" = [])),
    params(
        ("from" = Option<String>, Query, format = Date, description = "First day, YYYY-MM-DD (default: the first of `to`'s month)"),
        ("to" = Option<String>, Query, format = Date, description = "Last day, YYYY-MM-DD (default: today, UTC); at most 366 days after `from`"),
    ),
    responses(
        (status = 200, description = "The usage.", body = crate::openapi::UsageDocument),
        (status = 400, description = "A bad date or range; the message names the parameter.", body = crate::openapi::NeutralErrorBody),
        (status = 401, description = "Missing, unknown or revoked key.", body = crate::openapi::NeutralErrorBody),
        (status = 503, description = "A backend is unavailable; retry.", body = crate::openapi::NeutralErrorBody),
    )
)]
pub async fn get_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, NeutralError> {
    let key = require_key(&state, &headers, Scheme::Any).await?;
    let (from, to) = range(query.as_deref(), OffsetDateTime::now_utc().date())?;
    let days = state.tasks.usage(&key.id, from, to).await.map_err(crate::ServiceError::Store)?;
    let (tasks, images, millicredits) = totals(&days);
    let days: Vec<Value> = days
        .iter()
        .map(|d| json!({"day": day_text(d.day), "tasks": d.tasks, "images": d.images, "credits": d.credits()}))
        .collect();
    Ok(Json(json!({
        "key_id": key.id,
        "from": day_text(from),
        "to": day_text(to),
        "total": {"tasks": tasks, "images": images, "credits": millicredits_to_credits(millicredits)},
        "days": days,
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn the_default_range_is_the_current_month_up_to_today() {
        assert_eq!(range(None, date!(2026 - 12 - 17)).unwrap(), (date!(2026 - 12 - 01), date!(2026 - 12 - 17)));
        assert_eq!(
            range(Some("to=2026-02-10"), date!(2026 - 12 - 17)).unwrap(),
            (date!(2026 - 02 - 01), date!(2026 - 02 - 10))
        );
    }

    #[test]
    fn bad_ranges_are_refused_naming_the_parameter() {
        let today = date!(2026 - 12 - 17);
        let message = |q: &str| range(Some(q), today).unwrap_err().message().to_owned();
        assert!(message("from=2026-13-01").contains("`from`"));
        assert!(message("to=yesterday").contains("`to`"));
        assert!(message("from=2026-12-02&to=2026-12-01").contains("after"));
        assert!(message("from=2024-01-01&to=2026-01-01").contains("366"));
        assert!(message("month=12").contains("unknown query parameter `month`"));
        assert!(message("from=2026-12-01&from=2026-12-02").contains("more than once"));
        assert!(range(Some("from=2025-12-17&to=2026-12-17"), today).is_ok(), "366 days is allowed");
    }
}
