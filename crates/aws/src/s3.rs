//! S3 image store: private objects, read through presigned GET URLs.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use easel_core::ports::{ImageStore, StoreError};

/// SigV4 presigned URLs live at most seven days.
const MAX_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct S3ImageStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3ImageStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: &str) -> Self {
        S3ImageStore { client, bucket: bucket.to_owned() }
    }
}

#[async_trait]
impl ImageStore for S3ImageStore {
    async fn put_png(&self, key: &str, png: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("image/png")
            .body(ByteStream::from(png))
            .send()
            .await
            .map_err(|e| StoreError::backend("S3 PutObject", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let out = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(StoreError::backend("S3 GetObject", e)),
        };
        let bytes = out.body.collect().await.map_err(|e| StoreError::backend("S3 GetObject (body)", e))?;
        Ok(Some(bytes.to_vec()))
    }

    async fn url(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        let config = PresigningConfig::expires_in(ttl.min(MAX_URL_TTL))
            .map_err(|e| StoreError::backend("presigning an S3 URL", e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| StoreError::backend("presigning an S3 URL", e))?;
        Ok(request.uri().to_owned())
    }
}
