//! RDMA transport (cargo feature `rdma`, libibverbs through `rdma-sys`).
//!
//! Status: device discovery only. [`RdmaTransport::open`] lists the verbs devices and fails
//! with [`AgentError::NoRdmaDevice`] when there is none (no fake success); with a device it
//! reports that the UD queue-pair data path is not implemented yet, so a caller falls back to
//! `--transport udp` explicitly rather than silently.

use crate::error::AgentError;

/// An opened RDMA device (data path not implemented yet).
#[derive(Debug)]
pub struct RdmaTransport {
    /// Name of the device that would be used.
    pub device: String,
}

/// Names of the RDMA devices present (via `ibv_get_device_list`).
pub fn device_names() -> Vec<String> {
    let mut n: i32 = 0;
    // SAFETY: ibv_get_device_list returns a NULL-terminated array (or NULL) that we free
    // with ibv_free_device_list; the names are NUL-terminated C strings owned by the list.
    unsafe {
        let list = rdma_sys::ibv_get_device_list(&mut n);
        if list.is_null() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in 0..n.max(0) as usize {
            let dev = *list.add(i);
            if dev.is_null() {
                break;
            }
            let name = rdma_sys::ibv_get_device_name(dev);
            if !name.is_null() {
                out.push(
                    std::ffi::CStr::from_ptr(name)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        rdma_sys::ibv_free_device_list(list);
        out
    }
}

impl RdmaTransport {
    /// Opens the first RDMA device (or the one named).
    pub fn open(device: Option<&str>) -> Result<Self, AgentError> {
        let names = device_names();
        if names.is_empty() {
            return Err(AgentError::NoRdmaDevice);
        }
        let dev = match device {
            Some(d) => names
                .iter()
                .find(|n| n.as_str() == d)
                .cloned()
                .ok_or_else(|| {
                    AgentError::Transport(format!("RDMA device {d} not found; present: {names:?}"))
                })?,
            None => names[0].clone(),
        };
        Err(AgentError::Transport(format!(
            "RDMA device {dev} found, but the RDMA data path is not implemented yet; use --transport udp"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_is_a_clear_error() {
        if !device_names().is_empty() {
            eprintln!("skipped: an RDMA device is present");
            return;
        }
        let e = RdmaTransport::open(None).unwrap_err();
        assert_eq!(e, AgentError::NoRdmaDevice);
        assert!(e.to_string().contains("no RDMA device found"));
    }
}
