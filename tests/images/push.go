package images

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push sends every built index to its registry (the Ref's), with the
// credentials of the default keychain (~/.docker/config.json, as crane
// and docker use) unless opts say otherwise.
func Push(ctx context.Context, built []Built, opts ...remote.Option) error {
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	for _, b := range built {
		if err := remote.WriteIndex(b.Ref, b.Index, opts...); err != nil {
			return fmt.Errorf("pushing %s: %w", b.Ref, err)
		}
	}
	return nil
}
