// Sortable tables: click a header to sort by its column (numbers as numbers, text as text);
// cells without a value sort last in either direction.
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.addEventListener('click',function(){
    var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
    var asc=th.dataset.order!=='asc';
    table.querySelectorAll('th').forEach(function(h){delete h.dataset.order;});
    th.dataset.order=asc?'asc':'desc';
    var rows=Array.from(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[i].dataset.v||'',y=b.cells[i].dataset.v||'';
      if(x===''||y==='')return (x==='')-(y==='');
      var nx=Number(x),ny=Number(y);
      var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
      return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
  });
});
