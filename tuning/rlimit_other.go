//go:build !unix

package tuning

import "errors"

// getNoFile reports the open-file limit as unknown where getrlimit(2) does
// not exist.
func getNoFile() (Rlimit, error) {
	return Rlimit{}, errors.New("tuning: no getrlimit on this system")
}
