//! Linux's ioctl request numbers (`_IOC` of asm-generic/ioctl.h), for the devices whose
//! requests libc does not name.

const WRITE: u32 = 1;
const READ: u32 = 2;

const fn request(direction: u32, kind: u8, number: u8, size: usize) -> libc::Ioctl {
    (direction << 30 | (size as u32) << 16 | (kind as u32) << 8 | number as u32) as libc::Ioctl
}

/// `_IOR(kind, number, T)` where `size` is `sizeof(T)`.
pub const fn read(kind: u8, number: u8, size: usize) -> libc::Ioctl {
    request(READ, kind, number, size)
}

/// `_IOW(kind, number, T)`.
pub const fn write(kind: u8, number: u8, size: usize) -> libc::Ioctl {
    request(WRITE, kind, number, size)
}

/// `_IOWR(kind, number, T)`.
pub const fn read_write(kind: u8, number: u8, size: usize) -> libc::Ioctl {
    request(READ | WRITE, kind, number, size)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_numbers_are_the_kernels() {
        // PTP_SYS_OFFSET_PRECISE and PPS_FETCH as the kernel headers expand them.
        assert_eq!(super::read_write(b'=', 8, 64) as u32, 0xc040_3d08);
        assert_eq!(super::read_write(b'p', 0xa4, 8) as u32, 0xc008_70a4);
    }
}
