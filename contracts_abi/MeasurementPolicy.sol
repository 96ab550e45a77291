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
contract MeasurementPolicy {
    uint256 public constant MAX_MEASUREMENTS = 256;
    uint256 public constant MAX_LABEL_BYTES = 64;

    address public owner;
    address public pendingOwner;
    address public guardian;
    uint256 public version;

    bytes32[] private _ids;
    /// 1-based position of an id in `_ids`; 0 = not allowed.
    mapping(bytes32 => uint256) private _position;
    mapping(bytes32 => string) private _labels;

    event MeasurementAllowed(bytes32 indexed id, string label, uint256 version);
    event MeasurementRevoked(bytes32 indexed id, address indexed by, uint256 version);
    event MeasurementReplaced(
        bytes32 indexed oldId, bytes32 indexed newId, string label, uint256 version
    );
    event GuardianChanged(address indexed previousGuardian, address indexed newGuardian, uint256 version);
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner, uint256 version);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner, uint256 version);

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

    // -- owner or guardian ----------------------------------------------------------------

    /// Remove `id` from the allowed list (owner or guardian).
    function revoke(bytes32 id) external {
        if (msg.sender != owner && (guardian == address(0) || msg.sender != guardian)) {
            revert NotOwnerOrGuardian(msg.sender);
        }
        uint256 v = _bump();
        _remove(id);
        emit MeasurementRevoked(id, msg.sender, v);
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

    // -- internal -------------------------------------------------------------------------

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
