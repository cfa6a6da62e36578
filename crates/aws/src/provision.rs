//! Creating and deleting easel's resources outside CloudFormation: for tests against an AWS
//! emulator, and as the executable description of what `template.yaml` declares (keep the two
//! in step: the same key schema, index, TTL attribute and redrive policy).

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use easel_core::ports::StoreError;

use crate::dynamo::GSI1;

/// An SDK configuration for an emulator at `endpoint` (static dummy credentials, fixed region).
pub async fn emulator_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "emulator"))
        .endpoint_url(endpoint)
        .load()
        .await
}

fn key(name: &str, key_type: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(|e| StoreError::backend("building a key schema", e))
}

fn string_attribute(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| StoreError::backend("building an attribute definition", e))
}

/// The tasks table: `pk` (S) hash key, on demand, index `gsi1` (`gsi1pk`, `gsi1sk`), TTL on `expires_at`.
pub async fn create_table(sdk: &aws_config::SdkConfig, name: &str) -> Result<(), StoreError> {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(GSI1)
        .key_schema(key("gsi1pk", KeyType::Hash)?)
        .key_schema(key("gsi1sk", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(|e| StoreError::backend("building the index", e))?;
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .attribute_definitions(string_attribute("pk")?)
        .attribute_definitions(string_attribute("gsi1pk")?)
        .attribute_definitions(string_attribute("gsi1sk")?)
        .global_secondary_indexes(gsi)
        .send()
        .await
        .map_err(|e| StoreError::backend("DynamoDB CreateTable", e))?;
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name("expires_at")
        .build()
        .map_err(|e| StoreError::backend("building the TTL specification", e))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|e| StoreError::backend("DynamoDB UpdateTimeToLive", e))?;
    Ok(())
}

pub async fn delete_table(sdk: &aws_config::SdkConfig, name: &str) -> Result<(), StoreError> {
    aws_sdk_dynamodb::Client::new(sdk)
        .delete_table()
        .table_name(name)
        .send()
        .await
        .map_err(|e| StoreError::backend("DynamoDB DeleteTable", e))?;
    Ok(())
}

/// URLs of a queue and of its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub queue: String,
    pub dead_letter: String,
}

/// A queue whose messages move to `{name}-dlq` after `max_receives` receives.
pub async fn create_queue(
    sdk: &aws_config::SdkConfig,
    name: &str,
    visibility: Duration,
    max_receives: u32,
) -> Result<QueueUrls, StoreError> {
    let client = aws_sdk_sqs::Client::new(sdk);
    let dlq = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| StoreError::backend("SQS CreateQueue (dead-letter)", e))?;
    let dead_letter = dlq.queue_url.unwrap_or_default();
    let attributes = client
        .get_queue_attributes()
        .queue_url(&dead_letter)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| StoreError::backend("SQS GetQueueAttributes", e))?;
    let arn = attributes.attributes.and_then(|mut a| a.remove(&QueueAttributeName::QueueArn)).unwrap_or_default();
    let redrive = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receives.to_string()});
    let queue = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility.as_secs().to_string())
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(|e| StoreError::backend("SQS CreateQueue", e))?;
    Ok(QueueUrls { queue: queue.queue_url.unwrap_or_default(), dead_letter })
}

pub async fn delete_queue(sdk: &aws_config::SdkConfig, urls: &QueueUrls) -> Result<(), StoreError> {
    let client = aws_sdk_sqs::Client::new(sdk);
    for url in [&urls.queue, &urls.dead_letter] {
        client.delete_queue().queue_url(url).send().await.map_err(|e| StoreError::backend("SQS DeleteQueue", e))?;
    }
    Ok(())
}

/// Messages waiting in a queue (visible and in flight), as SQS approximates them.
/// A number attribute of the item whose `pk` is `pk`, read as stored (tests check what DynamoDB's
/// TTL sweeper will act on, which the emulator never does).
pub async fn item_number(
    sdk: &aws_config::SdkConfig,
    table: &str,
    pk: &str,
    attribute: &str,
) -> Result<Option<i64>, StoreError> {
    let out = aws_sdk_dynamodb::Client::new(sdk)
        .get_item()
        .table_name(table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| StoreError::backend("DynamoDB GetItem", e))?;
    Ok(out.item.and_then(|item| item.get(attribute)?.as_n().ok()?.parse().ok()))
}

/// Whether the table's TTL is enabled, and on which attribute.
pub async fn ttl_attribute(sdk: &aws_config::SdkConfig, table: &str) -> Result<Option<String>, StoreError> {
    let out = aws_sdk_dynamodb::Client::new(sdk)
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| StoreError::backend("DynamoDB DescribeTimeToLive", e))?;
    let description = out.time_to_live_description;
    let enabled = description
        .as_ref()
        .and_then(|d| d.time_to_live_status())
        .is_some_and(|s| *s == aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled);
    Ok(description.filter(|_| enabled).and_then(|d| d.attribute_name))
}

pub async fn queue_depth(sdk: &aws_config::SdkConfig, url: &str) -> Result<u64, StoreError> {
    let out = aws_sdk_sqs::Client::new(sdk)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| StoreError::backend("SQS GetQueueAttributes", e))?;
    let attributes = out.attributes.unwrap_or_default();
    let count = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}

/// Sends a raw body (e.g. a malformed one, in tests).
pub async fn send_raw(sdk: &aws_config::SdkConfig, url: &str, body: &str) -> Result<(), StoreError> {
    aws_sdk_sqs::Client::new(sdk)
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| StoreError::backend("SQS SendMessage", e))?;
    Ok(())
}

/// Receives raw messages (body, receipt handle, message id) without decoding them.
pub async fn receive_raw(
    sdk: &aws_config::SdkConfig,
    url: &str,
    max: i32,
    wait: Duration,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let out = aws_sdk_sqs::Client::new(sdk)
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(0))
        .send()
        .await
        .map_err(|e| StoreError::backend("SQS ReceiveMessage", e))?;
    Ok(out
        .messages
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.body.unwrap_or_default(), m.receipt_handle.unwrap_or_default(), m.message_id.unwrap_or_default()))
        .collect())
}

pub async fn create_bucket(sdk: &aws_config::SdkConfig, name: &str) -> Result<(), StoreError> {
    s3_client(sdk).create_bucket().bucket(name).send().await.map_err(|e| StoreError::backend("S3 CreateBucket", e))?;
    Ok(())
}

/// Deletes every object, then the bucket.
pub async fn delete_bucket(sdk: &aws_config::SdkConfig, name: &str) -> Result<(), StoreError> {
    let client = s3_client(sdk);
    let listed =
        client.list_objects_v2().bucket(name).send().await.map_err(|e| StoreError::backend("S3 ListObjectsV2", e))?;
    for object in listed.contents.unwrap_or_default() {
        if let Some(key) = object.key {
            client
                .delete_object()
                .bucket(name)
                .key(key)
                .send()
                .await
                .map_err(|e| StoreError::backend("S3 DeleteObject", e))?;
        }
    }
    client.delete_bucket().bucket(name).send().await.map_err(|e| StoreError::backend("S3 DeleteBucket", e))?;
    Ok(())
}

fn s3_client(sdk: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build())
}
