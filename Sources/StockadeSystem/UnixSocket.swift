// Unix-domain sockets: socket pairs, and sendmsg/recvmsg with file
// descriptors passed as SCM_RIGHTS. The channel between launcher and worker
// runs over one end of such a pair.
public import SystemPackage
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// A stream socket, or one that keeps message boundaries (SOCK_SEQPACKET).
public enum UnixSocketKind: Sendable {
    case stream, seqPacket

    var type: Int32 { Int32(self == .stream ? SOCK_STREAM.rawValue : SOCK_SEQPACKET.rawValue) }
}

/// A connected pair of Unix-domain stream sockets.
public enum UnixSocketPair {
    /// Creates a connected pair of `AF_UNIX` `SOCK_STREAM` (or `SOCK_SEQPACKET`) sockets, both
    /// close-on-exec (pass one into a child with an explicit fd mapping).
    ///
    /// The corresponding C function is `socketpair`.
    public static func make(_ kind: UnixSocketKind = .stream) throws(Errno) -> (FileDescriptor, FileDescriptor) {
        var fds: [CInt] = [-1, -1]
        _ = try retryingSyscall { socketpair(AF_UNIX, kind.type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }
}

/// Client ends of Unix-domain sockets bound to a path.
public enum UnixSocket {
    /// Connects a close-on-exec `SOCK_STREAM` (or `SOCK_SEQPACKET`) socket to the socket at `path`
    /// (at most 107 bytes: `ENAMETOOLONG` beyond).
    ///
    /// The corresponding C functions are `socket` and `connect`.
    public static func connect(path: String, _ kind: UnixSocketKind = .stream) throws(Errno) -> FileDescriptor {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw Errno.fileNameTooLong }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let fd = try retryingSyscall { socket(AF_UNIX, kind.type | Int32(SOCK_CLOEXEC.rawValue), 0) }
        // Not retried on EINTR: an interrupted connect goes on in the kernel.
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let code = Errno(rawValue: errno)
            Glibc.close(fd)
            throw code
        }
        return FileDescriptor(rawValue: fd)
    }
}

/// What one `recvmsg` call returned.
public struct ReceivedMessage: Sendable {
    /// Bytes written into the buffer; 0 means the peer closed its end.
    public var byteCount: Int
    /// Descriptors that arrived as SCM_RIGHTS, already close-on-exec. The
    /// caller owns them and must close every one.
    public var descriptors: [FileDescriptor]
    /// The kernel dropped control data that did not fit (`MSG_CTRUNC`):
    /// more descriptors were sent than the caller allowed for.
    public var controlTruncated: Bool
}

private let cmsgHeaderSize = MemoryLayout<cmsghdr>.size
private func cmsgAlign(_ n: Int) -> Int { (n + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1) }
private func cmsgSpace(_ n: Int) -> Int { cmsgAlign(cmsgHeaderSize) + cmsgAlign(n) }
private func cmsgLength(_ n: Int) -> Int { cmsgAlign(cmsgHeaderSize) + n }

extension FileDescriptor {
    /// Sends bytes on a socket, with `descriptors` attached as SCM_RIGHTS
    /// when it is not empty. Never raises SIGPIPE (`MSG_NOSIGNAL`): a closed
    /// peer comes back as ``Errno/brokenPipe``. Returns the number of bytes
    /// sent, which may be fewer than given; the descriptors go with the
    /// first byte. With `dontWait` a send that would block fails with
    /// ``Errno/wouldBlock`` instead (`MSG_DONTWAIT`), whatever the
    /// descriptor's own mode.
    ///
    /// The corresponding C function is `sendmsg`.
    public func sendMessage(_ bytes: UnsafeRawBufferPointer, passing descriptors: [FileDescriptor] = [],
                            dontWait: Bool = false) throws(Errno) -> Int {
        let flags = Int32(MSG_NOSIGNAL) | (dontWait ? Int32(MSG_DONTWAIT) : 0)
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        return try withUnsafeMutablePointer(to: &iov) { iovPointer throws(Errno) -> Int in
            var header = msghdr()
            header.msg_iov = iovPointer
            header.msg_iovlen = 1
            if descriptors.isEmpty {
                return try retryingSyscall { sendmsg(rawValue, &header, flags) }
            }
            let payload = descriptors.count * MemoryLayout<CInt>.size
            let space = cmsgSpace(payload)
            let control = UnsafeMutableRawPointer.allocate(byteCount: space, alignment: MemoryLayout<cmsghdr>.alignment)
            defer { control.deallocate() }
            control.initializeMemory(as: UInt8.self, repeating: 0, count: space)
            let cmsg = control.assumingMemoryBound(to: cmsghdr.self)
            cmsg.pointee.cmsg_len = cmsgLength(payload)
            cmsg.pointee.cmsg_level = SOL_SOCKET
            cmsg.pointee.cmsg_type = Int32(SCM_RIGHTS)
            let data = (control + cmsgAlign(cmsgHeaderSize)).assumingMemoryBound(to: CInt.self)
            for (i, fd) in descriptors.enumerated() { data[i] = fd.rawValue }
            header.msg_control = control
            header.msg_controllen = space
            return try retryingSyscall { sendmsg(rawValue, &header, flags) }
        }
    }

    /// Sends all of `bytes` (looping over short sends), with `descriptors`
    /// attached to the first send.
    ///
    /// The corresponding C function is `sendmsg`.
    public func sendAll(_ bytes: UnsafeRawBufferPointer, passing descriptors: [FileDescriptor] = []) throws(Errno) {
        var offset = 0
        var pending = descriptors
        while offset < bytes.count || !pending.isEmpty {
            let slice = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            let sent = try sendMessage(slice, passing: pending)
            pending = []
            offset += sent
        }
    }

    /// Receives bytes from a socket into `buffer`, and up to
    /// `maxDescriptors` descriptors passed as SCM_RIGHTS (installed
    /// close-on-exec). Check ``ReceivedMessage/controlTruncated``: the peer
    /// may send more than allowed.
    ///
    /// The corresponding C function is `recvmsg`.
    public func receiveMessage(into buffer: UnsafeMutableRawBufferPointer, maxDescriptors: Int) throws(Errno) -> ReceivedMessage {
        let space = maxDescriptors > 0 ? cmsgSpace(maxDescriptors * MemoryLayout<CInt>.size) : 0
        // A few dozen bytes for every receive: on the stack, not the heap.
        return try withUnsafeTemporaryAllocation(byteCount: max(space, 1), alignment: MemoryLayout<cmsghdr>.alignment) {
            control throws(Errno) -> ReceivedMessage in
            try receiveMessage(into: buffer, control: UnsafeMutableRawBufferPointer(rebasing: control[0..<space]))
        }
    }

    private func receiveMessage(into buffer: UnsafeMutableRawBufferPointer,
                                control: UnsafeMutableRawBufferPointer) throws(Errno) -> ReceivedMessage {
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let space = control.count
        return try withUnsafeMutablePointer(to: &iov) { iovPointer throws(Errno) -> ReceivedMessage in
            var header = msghdr()
            header.msg_iov = iovPointer
            header.msg_iovlen = 1
            header.msg_control = space > 0 ? control.baseAddress : nil
            header.msg_controllen = space
            let count = try retryingSyscall { recvmsg(rawValue, &header, Int32(MSG_CMSG_CLOEXEC)) }
            var result = ReceivedMessage(byteCount: count, descriptors: [],
                                         controlTruncated: header.msg_flags & Int32(MSG_CTRUNC) != 0)
            // Walk the control messages; collect every SCM_RIGHTS descriptor
            // so that none leaks, whatever else the peer sent.
            var offset = 0
            let length = header.msg_controllen
            while space > 0, offset + cmsgHeaderSize <= length {
                let cmsg = (control.baseAddress! + offset).assumingMemoryBound(to: cmsghdr.self)
                let cmsgLen = cmsg.pointee.cmsg_len
                guard cmsgLen >= cmsgHeaderSize, offset + cmsgLen <= length else { break }
                if cmsg.pointee.cmsg_level == SOL_SOCKET, cmsg.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                    let n = (cmsgLen - cmsgAlign(cmsgHeaderSize)) / MemoryLayout<CInt>.size
                    let data = (control.baseAddress! + offset + cmsgAlign(cmsgHeaderSize)).assumingMemoryBound(to: CInt.self)
                    for i in 0..<n { result.descriptors.append(FileDescriptor(rawValue: data[i])) }
                }
                offset += cmsgAlign(cmsgLen)
            }
            return result
        }
    }

    /// Sets or clears `FD_CLOEXEC`.
    ///
    /// The corresponding C function is `fcntl` with `F_SETFD`.
    public func setCloseOnExec(_ on: Bool) throws(Errno) {
        let flags = try retryingSyscall { stk_fcntl_int(rawValue, F_GETFD, 0) }
        let wanted = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC
        _ = try retryingSyscall { stk_fcntl_int(rawValue, F_SETFD, wanted) }
    }

    /// Sets a send timeout (`SO_SNDTIMEO`); nil removes it. A send that
    /// times out fails with ``Errno/wouldBlock`` (or sends fewer bytes).
    ///
    /// The corresponding C function is `setsockopt`.
    public func setSendTimeout(milliseconds: Int?) throws(Errno) {
        let ms = milliseconds ?? 0
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        _ = try retryingSyscall {
            setsockopt(rawValue, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Waits until the descriptor is readable (or at end of stream) for at
    /// most `timeoutMilliseconds`; false when the time ran out.
    ///
    /// The corresponding C function is `poll` with `POLLIN`.
    public func waitReadable(timeoutMilliseconds: Int) throws(Errno) -> Bool {
        var entry = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        return try retryingSyscall { poll(&entry, 1, Int32(clamping: timeoutMilliseconds)) } > 0
    }

    /// Shuts the socket down in both directions without closing the
    /// descriptor: a thread blocked reading it sees end of stream, one
    /// blocked writing it gets ``Errno/brokenPipe``, whatever the peer does.
    ///
    /// The corresponding C function is `shutdown` with `SHUT_RDWR`.
    public func shutdownBoth() throws(Errno) {
        _ = try retryingSyscall { Glibc.shutdown(rawValue, Int32(SHUT_RDWR)) }
    }

    /// Sets a receive timeout (`SO_RCVTIMEO`); nil removes it. A read that
    /// times out fails with ``Errno/wouldBlock``.
    ///
    /// The corresponding C function is `setsockopt`.
    public func setReceiveTimeout(milliseconds: Int?) throws(Errno) {
        let ms = milliseconds ?? 0
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        _ = try retryingSyscall {
            setsockopt(rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }
}
