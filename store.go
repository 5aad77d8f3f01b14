package oauthbearer

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// store.go: small records kept in Caddy's configured storage (file system
// by default; Redis, Consul, S3, ... in a cluster), encrypted with
// AES-256-GCM and bound to their storage key, so that a record copied under
// another key does not decrypt. The storage is shared and can be slow,
// locked by a dead instance, or failing: every call here is bounded, and
// none is ever made on the path of a request that has a valid token.

// storageTimeout bounds one storage read, write or delete.
const storageTimeout = 5 * time.Second

// errUndecryptable is a record that does not decrypt: tampered with, or
// written with another key.
var errUndecryptable = errors.New("the stored record cannot be decrypted (tampered with, or encrypted with another key)")

// errNoStorage: the handler was provisioned outside a configuration.
var errNoStorage = errors.New("no storage is configured")

// storage returns the newest configuration's storage.
func (s *recordStore) storage() (certmagic.Storage, error) {
	if st := s.env.storage(); st != nil {
		return st, nil
	}
	return nil, errNoStorage
}

// contextStorage returns the configuration's storage; nil for a context
// made outside a configuration (caddy.NewContext in tests and commands),
// whose Storage method would panic.
func contextStorage(ctx caddy.Context) (s certmagic.Storage) {
	defer func() {
		if recover() != nil {
			s = nil
		}
	}()
	return ctx.Storage()
}

// recordStore reads and writes the encrypted records of one credential
// set. The storage is the newest configuration's (env).
type recordStore struct {
	env  *env
	keys *keyring
}

// keyring is the AEADs records are sealed with: the first encrypts, each
// one decrypts (so records written before a key rotation stay readable,
// and are encrypted with the new key when next written).
type keyring struct {
	aeads []cipher.AEAD
}

// errNoRecordSecret: a configuration without secret material and without
// encryption_key has no key to seal records with (checkRecordKey refuses
// it at load; this is the guard of the last resort).
var errNoRecordSecret = errors.New("encryption_key is required to store records: this configuration holds no secret to derive a key from (make one with: openssl rand -base64 32)")

// newKeyring derives one AES-256-GCM key per configured encryption key
// and, after them, one from the configuration's secret material (the
// client secret, else its private keys: recordSecret), the default used
// alone when no key is configured; each with HKDF-SHA256 salted with
// purpose and bound to id. Purpose and id are public (the id is in the
// storage key): the secrecy of a record rests on the secret alone, so a
// key is never derived from an empty one.
func newKeyring(cs *credentialSet, purpose, id string) (*keyring, error) {
	secrets := append([][]byte(nil), cs.encryptionKeys...)
	if secret := cs.recordSecret(); len(secret) > 0 {
		secrets = append(secrets, secret)
	}
	if len(secrets) == 0 {
		return nil, errNoRecordSecret
	}
	kr := &keyring{}
	for _, secret := range secrets {
		key, err := hkdf.Key(sha256.New, secret, []byte(purpose), id, 32)
		if err != nil {
			return nil, err
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		kr.aeads = append(kr.aeads, aead)
	}
	return kr, nil
}

func newRecordStore(e *env, cs *credentialSet, purpose, id string) (*recordStore, error) {
	kr, err := newKeyring(cs, purpose, id)
	if err != nil {
		return nil, err
	}
	return &recordStore{env: e, keys: kr}, nil
}

// seal encrypts plain with the first key, bound to aad (a storage key, or
// another purpose).
func (s *recordStore) seal(aad string, plain []byte) []byte {
	aead := s.keys.aeads[0]
	nonce := make([]byte, aead.NonceSize())
	rand.Read(nonce)
	return aead.Seal(nonce, nonce, plain, []byte(aad))
}

// open decrypts what seal made with the same aad, with any key.
func (s *recordStore) open(aad string, sealed []byte) ([]byte, error) {
	for _, aead := range s.keys.aeads {
		ns := aead.NonceSize()
		if len(sealed) < ns+aead.Overhead() {
			return nil, errUndecryptable
		}
		if plain, err := aead.Open(nil, sealed[:ns], sealed[ns:], []byte(aad)); err == nil {
			return plain, nil
		}
	}
	return nil, errUndecryptable
}

// load reads the record at key into v. It reports false when there is
// none; a record that does not decrypt or parse is errUndecryptable.
func (s *recordStore) load(ctx context.Context, key string, v any) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	st, err := s.storage()
	if err != nil {
		return false, err
	}
	b, err := st.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", key, err)
	}
	plain, err := s.open(key, b)
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(plain, v); err != nil {
		return false, errUndecryptable
	}
	return true, nil
}

// save encrypts v and writes it at key (the file system storage writes a
// temporary file and renames it: a crash never leaves half a record).
func (s *recordStore) save(ctx context.Context, key string, v any) error {
	plain, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	st, err := s.storage()
	if err != nil {
		return err
	}
	if err := st.Store(ctx, key, s.seal(key, plain)); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// remove deletes the record at key; a missing record is not an error.
func (s *recordStore) remove(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, storageTimeout)
	defer cancel()
	st, err := s.storage()
	if err != nil {
		return err
	}
	if err := st.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// lock takes the storage lock name, which every instance sharing the
// storage honours, waiting at most wait (or until ctx ends). The returned
// function releases it, with a bounded call of its own.
func (s *recordStore) lock(ctx context.Context, name string, wait time.Duration) (func(), error) {
	storage, err := s.storage()
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := storage.Lock(lctx, name); err != nil {
		if lctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("lock %s still held by another instance after %s", name, wait)
		}
		return nil, fmt.Errorf("taking lock %s: %w", name, err)
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storageTimeout)
		defer cancel()
		if err := storage.Unlock(uctx, name); err != nil {
			s.env.logger().Error("releasing a storage lock", zap.String("lock", name), zap.Error(err))
		}
	}, nil
}
