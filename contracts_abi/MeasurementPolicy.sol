// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title MeasurementPolicy: the on-chain list of TEE builds allowed to serve.
/// @notice Each entry is a measurement id (bytes32, defined in certmgr/quote.py: a hash over the
///         TEE type and its launch/runtime measurements) with a short human label. The proxy
///         and its clients read `snapshot()` at one block and serve / trust only listed ids.
/// @dev    Roles:
///         - owner: allow, revoke, replace, set the guardian, start an ownership transfer
///           (two-step: the new owner must call `acceptOwnership`).
///         - guardian (optional, zero address = none): may only revoke. It is the fast kill
///           switch, e.g. a hot key held by an on-call operator while the owner is a multisig.
///         `version` increases by one on every successful state-changing call, so a reader can
///         tell two snapshots apart without comparing the lists. The list is bounded
///         (MAX_MEASUREMENTS, MAX_LABEL_BYTES) so that `snapshot()` stays cheap to read and a
///         reader can cap what it accepts.
///
///         Receipts (docs/RECEIPTS.md): the owner registers each proxy's receipt-signing
///         address for the measurement its attestation shows (`registerSigner`); the owner or
///         the guardian can unregister it. `verifyReceipt` recomputes the receipt's EIP-712
///         digest (default domain: name "teeproxy-receipt", version "1", no chainId and no
///         verifyingContract), recovers the signer with ecrecover under EIP-2 rules, and
///         accepts only a signer registered for exactly the receipt's measurement while that
///         measurement is allowed: revoking (or replacing) a measurement invalidates every
///         receipt of that build at once. Re-allowing it makes the receipts of signers that
///         are still registered valid again; `unregisterSigner` retires a key for good.
contract MeasurementPolicy {
    uint256 public constant MAX_MEASUREMENTS = 256;
    uint256 public constant MAX_LABEL_BYTES = 64;

    /// EIP-712 `typeHash` of the receipt struct (docs/RECEIPTS.md "Struct").
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 requestHash,bytes32 responseHash,string model,string responseId,"
        "uint64 timestamp,bytes32 measurementId)"
    );
    /// EIP-712 domain separator of the default receipt domain (docs/RECEIPTS.md "Domain"):
    /// `EIP712Domain(string name,string version)` with "teeproxy-receipt" and "1". chainId
    /// and verifyingContract are omitted, so receipts are not tied to a chain or a contract.
    bytes32 public constant RECEIPT_DOMAIN_SEPARATOR = keccak256(
        abi.encode(
            keccak256("EIP712Domain(string name,string version)"),
            keccak256("teeproxy-receipt"),
            keccak256("1")
        )
    );
    /// secp256k1 group order / 2: EIP-2 accepts only signatures with s <= this ("low s").
    uint256 private constant _HALF_N =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 private constant _N =
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    address public owner;
    address public pendingOwner;
    address public guardian;
    uint256 public version;

    bytes32[] private _ids;
    /// 1-based position of an id in `_ids`; 0 = not allowed.
    mapping(bytes32 => uint256) private _position;
    mapping(bytes32 => string) private _labels;
    /// The measurement each receipt signer is registered for; zero = not registered.
    mapping(address => bytes32) private _signerMeasurement;

    event MeasurementAllowed(bytes32 indexed id, string label, uint256 version);
    event MeasurementRevoked(bytes32 indexed id, address indexed by, uint256 version);
    event MeasurementReplaced(
        bytes32 indexed oldId, bytes32 indexed newId, string label, uint256 version
    );
    event GuardianChanged(address indexed previousGuardian, address indexed newGuardian, uint256 version);
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner, uint256 version);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner, uint256 version);
    event SignerRegistered(address indexed signer, bytes32 indexed measurementId, uint256 version);
    event SignerUnregistered(
        address indexed signer, bytes32 indexed measurementId, address indexed by, uint256 version
    );

    error NotOwner(address caller);
    error NotOwnerOrGuardian(address caller);
    error NotPendingOwner(address caller);
    error ZeroMeasurement();
    error ZeroAddress();
    error AlreadyAllowed(bytes32 id);
    error NotAllowed(bytes32 id);
    error SameMeasurement(bytes32 id);
    error LabelTooLong(uint256 length, uint256 max);
    error TooManyMeasurements(uint256 max);
    error SignerNotRegistered(address signer);

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    constructor(address initialOwner) {
        if (initialOwner == address(0)) revert ZeroAddress();
        owner = initialOwner;
        emit OwnershipTransferred(address(0), initialOwner, 0);
    }

    // -- owner ---------------------------------------------------------------------------

    /// Add `id` to the allowed list with `label`.
    function allow(bytes32 id, string calldata label) external onlyOwner {
        uint256 v = _bump();
        _add(id, label);
        emit MeasurementAllowed(id, label, v);
    }

    /// Remove `oldId` and add `newId` in one transaction: an upgrade retires the old build
    /// instead of piling up versions, and no block ever sees both or neither.
    function replace(bytes32 oldId, bytes32 newId, string calldata label) external onlyOwner {
        if (oldId == newId) revert SameMeasurement(oldId);
        uint256 v = _bump();
        _remove(oldId);
        _add(newId, label);
        emit MeasurementReplaced(oldId, newId, label, v);
    }

    /// Set (or, with the zero address, clear) the guardian, who may only revoke.
    function setGuardian(address newGuardian) external onlyOwner {
        uint256 v = _bump();
        address previous = guardian;
        guardian = newGuardian;
        emit GuardianChanged(previous, newGuardian, v);
    }

    /// Start a two-step transfer: `newOwner` becomes owner only once it calls
    /// `acceptOwnership`. The zero address cancels a pending transfer.
    function transferOwnership(address newOwner) external onlyOwner {
        uint256 v = _bump();
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner, v);
    }

    /// Register `signer` (a proxy's receipt-signing address, taken from its verified
    /// attestation) for `measurementId`, which must be allowed now. A signer belongs to exactly
    /// one measurement: registering it again moves it.
    function registerSigner(address signer, bytes32 measurementId) external onlyOwner {
        if (signer == address(0)) revert ZeroAddress();
        if (measurementId == bytes32(0)) revert ZeroMeasurement();
        if (_position[measurementId] == 0) revert NotAllowed(measurementId);
        uint256 v = _bump();
        _signerMeasurement[signer] = measurementId;
        emit SignerRegistered(signer, measurementId, v);
    }

    // -- owner or guardian ----------------------------------------------------------------

    /// Remove `id` from the allowed list (owner or guardian).
    function revoke(bytes32 id) external {
        _onlyOwnerOrGuardian();
        uint256 v = _bump();
        _remove(id);
        emit MeasurementRevoked(id, msg.sender, v);
    }

    /// Unregister a receipt signer (owner or guardian): its receipts no longer verify, whatever
    /// happens to its measurement. The kill switch for one leaked or retired signing key.
    function unregisterSigner(address signer) external {
        _onlyOwnerOrGuardian();
        bytes32 mid = _signerMeasurement[signer];
        if (mid == bytes32(0)) revert SignerNotRegistered(signer);
        uint256 v = _bump();
        delete _signerMeasurement[signer];
        emit SignerUnregistered(signer, mid, msg.sender, v);
    }

    // -- pending owner --------------------------------------------------------------------

    function acceptOwnership() external {
        if (pendingOwner == address(0) || msg.sender != pendingOwner) {
            revert NotPendingOwner(msg.sender);
        }
        uint256 v = _bump();
        address previous = owner;
        owner = msg.sender;
        pendingOwner = address(0);
        emit OwnershipTransferred(previous, msg.sender, v);
    }

    // -- views ----------------------------------------------------------------------------

    function isAllowed(bytes32 id) external view returns (bool) {
        return _position[id] != 0;
    }

    /// One id: whether it is allowed and its label ("" when not allowed).
    function measurement(bytes32 id) external view returns (bool allowed, string memory label) {
        allowed = _position[id] != 0;
        label = _labels[id];
    }

    function count() external view returns (uint256) {
        return _ids.length;
    }

    /// The whole policy in one call, so that a reader sees one consistent state per block.
    function snapshot()
        external
        view
        returns (uint256 currentVersion, bytes32[] memory ids, string[] memory labels)
    {
        currentVersion = version;
        ids = _ids;
        labels = new string[](ids.length);
        for (uint256 i = 0; i < ids.length; i++) {
            labels[i] = _labels[ids[i]];
        }
    }

    /// The measurement `signer` is registered for (zero when none).
    function signerMeasurement(address signer) external view returns (bytes32) {
        return _signerMeasurement[signer];
    }

    // -- receipts -------------------------------------------------------------------------

    /// The EIP-712 digest a receipt's signature is over: keccak256(0x19 0x01 ||
    /// RECEIPT_DOMAIN_SEPARATOR || hashStruct(Receipt)), exactly as docs/RECEIPTS.md defines
    /// it (and certmgr.receipt.typed_data_hash computes it). The parameters are the receipt's
    /// fields in the order of the EIP-712 type.
    function receiptDigest(
        bytes32 requestHash,
        bytes32 responseHash,
        string calldata model,
        string calldata responseId,
        uint64 timestamp,
        bytes32 measurementId
    ) public pure returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                RECEIPT_TYPEHASH,
                requestHash,
                responseHash,
                keccak256(bytes(model)),
                keccak256(bytes(responseId)),
                timestamp,
                measurementId
            )
        );
        return keccak256(abi.encodePacked(hex"1901", RECEIPT_DOMAIN_SEPARATOR, structHash));
    }

    /// Check a receipt on chain: its fields as in `receiptDigest`, then `signature`, 65 bytes
    /// r || s || v (v 27 or 28, low s). Never reverts on a bad signature: `signer` is the
    /// recovered address (zero when the signature is malformed or does not recover) and
    /// `valid` is true only when that signer is registered for exactly `measurementId` and
    /// that measurement is allowed now. The bodies' hashes are not (cannot be) checked here:
    /// a caller that holds the request and response must compare their SHA-256 with
    /// `requestHash` / `responseHash` itself.
    function verifyReceipt(
        bytes32 requestHash,
        bytes32 responseHash,
        string calldata model,
        string calldata responseId,
        uint64 timestamp,
        bytes32 measurementId,
        bytes calldata signature
    ) external view returns (bool valid, address signer) {
        bytes32 digest =
            receiptDigest(requestHash, responseHash, model, responseId, timestamp, measurementId);
        signer = _recover(digest, signature);
        if (signer == address(0)) return (false, address(0));
        bytes32 mid = _signerMeasurement[signer];
        valid = mid != bytes32(0) && mid == measurementId && _position[mid] != 0;
    }

    // -- internal -------------------------------------------------------------------------

    function _onlyOwnerOrGuardian() private view {
        if (msg.sender != owner && (guardian == address(0) || msg.sender != guardian)) {
            revert NotOwnerOrGuardian(msg.sender);
        }
    }

    /// ecrecover with the checks of OpenZeppelin's ECDSA.recover (EIP-2: v in {27, 28}, r and
    /// s nonzero and below the group order, s in the lower half), returning zero instead of
    /// reverting on anything malformed.
    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address) {
        if (sig.length != 65) return address(0);
        uint256 r = uint256(bytes32(sig[0:32]));
        uint256 s = uint256(bytes32(sig[32:64]));
        uint8 v = uint8(sig[64]);
        if (v != 27 && v != 28) return address(0);
        if (r == 0 || r >= _N || s == 0 || s > _HALF_N) return address(0);
        return ecrecover(digest, v, bytes32(r), bytes32(s));
    }

    function _bump() private returns (uint256) {
        version += 1;
        return version;
    }

    function _add(bytes32 id, string calldata label) private {
        if (id == bytes32(0)) revert ZeroMeasurement();
        if (bytes(label).length > MAX_LABEL_BYTES) {
            revert LabelTooLong(bytes(label).length, MAX_LABEL_BYTES);
        }
        if (_position[id] != 0) revert AlreadyAllowed(id);
        if (_ids.length >= MAX_MEASUREMENTS) revert TooManyMeasurements(MAX_MEASUREMENTS);
        _ids.push(id);
        _position[id] = _ids.length;
        _labels[id] = label;
    }

    function _remove(bytes32 id) private {
        uint256 pos = _position[id];
        if (pos == 0) revert NotAllowed(id);
        uint256 last = _ids.length;
        if (pos != last) {
            bytes32 moved = _ids[last - 1];
            _ids[pos - 1] = moved;
            _position[moved] = pos;
        }
        _ids.pop();
        delete _position[id];
        delete _labels[id];
    }
}
