//! Filesystem image store. URLs point at the local server's `/files/{key}` route and carry an
//! expiry and an HMAC signature, like a presigned S3 URL: anyone with the URL can fetch the image
//! until it expires, nobody can forge one for another key or a later expiry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use easel_core::ports::{ImageStore, StoreError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

type HmacSha256 = Hmac<Sha256>;

/// Route prefix the local server serves files under.
pub const FILES_ROUTE: &str = "/files/";

#[derive(Clone)]
pub struct FsImageStore {
    root: PathBuf,
    public_base_url: String,
    signing_key: Vec<u8>,
}

impl std::fmt::Debug for FsImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsImageStore")
            .field("root", &self.root)
            .field("public_base_url", &self.public_base_url)
            .finish_non_exhaustive()
    }
}

/// Why a file request was refused. Every variant is a 4xx for the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileAccessError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link has expired; read the task again for a fresh one")]
    Expired,
    #[error("the link's signature does not match")]
    BadSignature,
    #[error("no such file")]
    NotFound,
}

/// Keys are written by easel itself (`images/{uuid}/{n}.png`); anything else is refused, so a key
/// can never climb out of the root.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
}

impl FsImageStore {
    /// `root` holds the files; `public_base_url` is how clients reach the local server
    /// (e.g. `http://127.0.0.1:8080`); `signing_key` signs URLs.
    pub fn new(root: PathBuf, public_base_url: &str, signing_key: Vec<u8>) -> Self {
        FsImageStore { root, public_base_url: public_base_url.trim_end_matches('/').to_owned(), signing_key }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        if valid_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(StoreError::Corrupt(format!("invalid object key '{key}'")))
        }
    }

    fn signature(&self, key: &str, expires: i64) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.signing_key).expect("HMAC accepts keys of any length");
        mac.update(format!("GET\n{key}\n{expires}").as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a `/files/{key}?expires=…&signature=…` request and returns the file's path.
    pub fn authorize(
        &self,
        key: &str,
        expires: &str,
        signature: &str,
        now: OffsetDateTime,
    ) -> Result<PathBuf, FileAccessError> {
        if !valid_key(key) {
            return Err(FileAccessError::Malformed);
        }
        let expires: i64 = expires.parse().map_err(|_| FileAccessError::Malformed)?;
        let given = hex::decode(signature).map_err(|_| FileAccessError::Malformed)?;
        let mut mac = HmacSha256::new_from_slice(&self.signing_key).expect("HMAC accepts keys of any length");
        mac.update(format!("GET\n{key}\n{expires}").as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&given).map_err(|_| FileAccessError::BadSignature)?;
        if now.unix_timestamp() > expires {
            return Err(FileAccessError::Expired);
        }
        let path = self.root.join(key);
        if path.is_file() { Ok(path) } else { Err(FileAccessError::NotFound) }
    }
}

#[async_trait]
impl ImageStore for FsImageStore {
    async fn put_png(&self, key: &str, png: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await.map_err(|e| StoreError::backend("creating an image folder", e))?;
        // Write then rename, so a reader never sees half a file and a crash leaves no torn image.
        let tmp = dir.join(format!(".{}.tmp", hex::encode(rand::random::<[u8; 8]>())));
        tokio::fs::write(&tmp, png).await.map_err(|e| StoreError::backend("writing an image", e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| StoreError::backend("writing an image", e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.path_of(key)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::backend("reading an image", e)),
        }
    }

    async fn url(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        self.path_of(key)?;
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let expires = OffsetDateTime::now_utc().unix_timestamp().saturating_add(ttl);
        let signature = hex::encode(self.signature(key, expires));
        Ok(format!("{}{FILES_ROUTE}{key}?expires={expires}&signature={signature}", self.public_base_url))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FsImageStore {
        FsImageStore::new(dir.to_path_buf(), "http://127.0.0.1:1/", b"secret".to_vec())
    }

    fn query(url: &str) -> (String, String, String) {
        let (path, query) = url.split_once('?').unwrap();
        let key = path.split_once(FILES_ROUTE).unwrap().1.to_owned();
        let mut expires = String::new();
        let mut signature = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            match k {
                "expires" => expires = v.to_owned(),
                "signature" => signature = v.to_owned(),
                _ => {}
            }
        }
        (key, expires, signature)
    }

    #[tokio::test]
    async fn a_signed_url_opens_its_own_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put_png("images/t/0.png", b"png0".to_vec()).await.unwrap();
        s.put_png("images/t/1.png", b"png1".to_vec()).await.unwrap();
        let url = s.url("images/t/0.png", Duration::from_secs(60)).await.unwrap();
        assert!(url.starts_with("http://127.0.0.1:1/files/images/t/0.png?expires="), "{url}");
        let (key, expires, sig) = query(&url);
        let now = OffsetDateTime::now_utc();
        let path = s.authorize(&key, &expires, &sig, now).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"png0");
        assert_eq!(s.authorize("images/t/1.png", &expires, &sig, now), Err(FileAccessError::BadSignature));
        let later = (expires.parse::<i64>().unwrap() + 1).to_string();
        assert_eq!(s.authorize(&key, &later, &sig, now), Err(FileAccessError::BadSignature));
        assert_eq!(s.authorize(&key, &expires, "zz", now), Err(FileAccessError::Malformed));
    }

    #[tokio::test]
    async fn a_signed_url_stops_working_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.put_png("images/t/0.png", b"png0".to_vec()).await.unwrap();
        let (key, expires, sig) = query(&s.url("images/t/0.png", Duration::from_secs(60)).await.unwrap());
        let after = OffsetDateTime::now_utc() + time::Duration::seconds(61);
        assert_eq!(s.authorize(&key, &expires, &sig, after), Err(FileAccessError::Expired));
    }

    #[tokio::test]
    async fn keys_that_could_escape_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for key in ["../x.png", "/etc/passwd", "images/../../x", "a//b", "a b", ""] {
            assert!(s.put_png(key, vec![1]).await.is_err(), "{key}");
            assert_eq!(
                s.authorize(key, "1", "00", OffsetDateTime::now_utc()),
                Err(FileAccessError::Malformed),
                "{key}"
            );
        }
    }
}
