//! S3 backend (aws-sdk-s3). Retries with exponential backoff on throttling, 5xx and timeouts
//! come from the SDK's standard retry strategy; this module only maps errors and drives
//! pagination and multipart uploads.

use std::path::Path;

use aws_config::{meta::region::RegionProviderChain, retry::RetryConfig, BehaviorVersion, Region};
use aws_sdk_s3::{
    config::{http::HttpResponse, Credentials, RequestChecksumCalculation},
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::{ByteReader, ObjectMeta};
use crate::error::{Error, Result};
use crate::plan::StorageConfig;

/// Parts of a multipart upload. S3 needs at least 5 MiB; 16 MiB keeps a 100 GiB shard under the
/// 10,000-part limit while bounding the memory one upload holds.
const PART_SIZE: usize = 16 << 20;

pub struct S3Store {
    client: Client,
}

fn uri(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

fn storage_error<E, R>(op: &'static str, bucket: &str, key: &str, err: SdkError<E, R>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Error::Storage { op, uri: uri(bucket, key), message: DisplayErrorContext(&err).to_string() }
}

fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

impl S3Store {
    pub async fn connect(config: &StorageConfig) -> Self {
        let region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new("us-east-1"));
        let retry = RetryConfig::standard().with_max_attempts(config.max_attempts.unwrap_or(8));
        let shared = aws_config::defaults(BehaviorVersion::latest()).region(region).retry_config(retry).load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        let endpoint = config.endpoint.clone().or_else(|| std::env::var("MIRA_S3_ENDPOINT").ok());
        if let Some(endpoint) = &endpoint {
            // S3-compatible servers often reject the newer default checksum headers.
            builder =
                builder.endpoint_url(endpoint).request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        builder = builder.force_path_style(config.path_style.unwrap_or(endpoint.is_some()));
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.credentials_provider(Credentials::new(id, secret, None, None, "mira-plan"));
        }
        S3Store { client: Client::from_conf(builder.build()) }
    }

    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut pages = self.client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| storage_error("list", bucket, prefix, e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push(ObjectMeta {
                        uri: uri(bucket, key),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        version: object.e_tag().unwrap_or_default().to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Bytes> {
        let output = self.get_object(bucket, key).await?;
        let data = output.body.collect().await.map_err(|e| Error::Storage {
            op: "read",
            uri: uri(bucket, key),
            message: e.to_string(),
        })?;
        Ok(data.into_bytes())
    }

    async fn get_object(&self, bucket: &str, key: &str) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput> {
        match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(output) => Ok(output),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                Err(Error::NotFound(uri(bucket, key)))
            }
            Err(e) => Err(storage_error("get", bucket, key, e)),
        }
    }

    pub async fn open_read(&self, bucket: &str, key: &str) -> Result<ByteReader> {
        let output = self.get_object(bucket, key).await?;
        Ok(Box::new(output.body.into_async_read()))
    }

    /// Returns false when `if_absent` is set and the key already exists (HTTP 412, or 409 when
    /// a concurrent conditional write is still in flight).
    pub async fn put(&self, bucket: &str, key: &str, data: Bytes, if_absent: bool) -> Result<bool> {
        let mut request = self.client.put_object().bucket(bucket).key(key).body(ByteStream::from(data));
        if if_absent {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if if_absent && matches!(http_status(&e), Some(412) | Some(409)) => Ok(false),
            Err(e) => Err(storage_error("put", bucket, key, e)),
        }
    }

    pub async fn put_file(&self, bucket: &str, key: &str, file: &Path) -> Result<()> {
        let size = tokio::fs::metadata(file).await.map_err(|e| Error::io(file, e))?.len();
        if size <= PART_SIZE as u64 {
            let data = tokio::fs::read(file).await.map_err(|e| Error::io(file, e))?;
            return self.put(bucket, key, data.into(), false).await.map(|_| ());
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| storage_error("create multipart upload", bucket, key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = self.upload_parts(bucket, key, &upload_id, file).await;
        if result.is_err() {
            // Best effort: an abandoned upload only costs storage until the bucket's lifecycle rule.
            let _ = self.client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
        }
        result
    }

    async fn upload_parts(&self, bucket: &str, key: &str, upload_id: &str, file: &Path) -> Result<()> {
        let mut reader = tokio::fs::File::open(file).await.map_err(|e| Error::io(file, e))?;
        let mut parts = Vec::new();
        for part_number in 1.. {
            let mut buf = Vec::with_capacity(PART_SIZE);
            (&mut reader).take(PART_SIZE as u64).read_to_end(&mut buf).await.map_err(|e| Error::io(file, e))?;
            if buf.is_empty() {
                break;
            }
            let part = self
                .client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(buf))
                .send()
                .await
                .map_err(|e| storage_error("upload part", bucket, key, e))?;
            parts.push(
                CompletedPart::builder().part_number(part_number).set_e_tag(part.e_tag().map(str::to_string)).build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| storage_error("complete multipart upload", bucket, key, e))?;
        Ok(())
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| storage_error("delete", bucket, key, e))?;
        Ok(())
    }
}
