//! SQS queue adapter: JSON message bodies, SQS's own visibility timeout, receive count and
//! redrive policy (the dead-letter queue is configured on the queue, not here).

use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use easel_core::ports::{Delivery, Queue, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// SQS limits: at most 10 messages per receive, 20 s of long polling, 12 h of visibility.
const MAX_BATCH: u32 = 10;
const MAX_WAIT_SECS: u64 = 20;
const MAX_VISIBILITY_SECS: u64 = 12 * 3600;

#[derive(Debug)]
pub struct SqsQueue<M> {
    client: aws_sdk_sqs::Client,
    url: String,
    _message: PhantomData<fn() -> M>,
}

impl<M> SqsQueue<M> {
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Self {
        SqsQueue { client, url: url.to_owned(), _message: PhantomData }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// SQS counts whole seconds; a partial second is rounded up so a lease is never shortened.
fn whole_seconds(d: Duration, max: u64) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.min(max)).unwrap_or(i32::MAX)
}

/// Decodes a message body. Public so the Lambda handlers decode event records the same way.
pub fn decode_body<M: DeserializeOwned>(body: &str) -> Result<M, serde_json::Error> {
    serde_json::from_str(body)
}

#[async_trait]
impl<M> Queue<M> for SqsQueue<M>
where
    M: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn send(&self, message: &M) -> Result<(), StoreError> {
        let body = serde_json::to_string(message).map_err(|e| StoreError::Corrupt(format!("message: {e}")))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| StoreError::backend("SQS SendMessage", e))?;
        Ok(())
    }

    async fn receive(&self, max: u32, visibility: Duration, wait: Duration) -> Result<Vec<Delivery<M>>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, MAX_BATCH)).unwrap_or(1))
            .visibility_timeout(whole_seconds(visibility, MAX_VISIBILITY_SECS))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(MAX_WAIT_SECS)).unwrap_or(0))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| StoreError::backend("SQS ReceiveMessage", e))?;
        let mut deliveries = Vec::new();
        for message in out.messages.unwrap_or_default() {
            let Some(receipt) = message.receipt_handle else { continue };
            let receive_count = message
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            match decode_body::<M>(message.body.as_deref().unwrap_or_default()) {
                Ok(message) => deliveries.push(Delivery { message, receipt, receive_count }),
                Err(e) => {
                    // A body no consumer can read never becomes readable: drop it loudly.
                    tracing::error!(queue = %self.url, message_id = ?message.message_id, error = %e, "dropping an unreadable message");
                    self.ack(&receipt).await?;
                }
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| StoreError::backend("SQS DeleteMessage", e))?;
        Ok(())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(whole_seconds(visibility, MAX_VISIBILITY_SECS))
            .send()
            .await
            .map_err(|e| StoreError::backend("SQS ChangeMessageVisibility", e))?;
        Ok(())
    }
}

/// An SQS event record as a [`Delivery`]: the decoded body, the receipt and the receive count.
pub fn delivery_of<M: serde::de::DeserializeOwned>(
    record: &aws_lambda_events::event::sqs::SqsMessage,
) -> Result<Delivery<M>, String> {
    let body = record.body.as_deref().ok_or("the message has no body")?;
    let message = decode_body(body).map_err(|e| format!("the body is not a valid message: {e}"))?;
    let receive_count = record.attributes.get("ApproximateReceiveCount").and_then(|v| v.parse().ok()).unwrap_or(1);
    Ok(Delivery { message, receipt: record.receipt_handle.clone().unwrap_or_default(), receive_count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_seconds_round_up_and_long_durations_are_capped() {
        assert_eq!(whole_seconds(Duration::ZERO, 100), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1), 100), 1);
        assert_eq!(whole_seconds(Duration::from_millis(2500), 100), 3);
        assert_eq!(whole_seconds(Duration::from_secs(1000), 100), 100);
    }
}
