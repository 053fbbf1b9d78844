// MariaDB Connector/C (Debian's libmariadb-dev), found through pkg-config's `libmariadb`, which
// puts /usr/include/mariadb on the include path. Everything FilmCache calls imports as it is.
#include <mysql.h>
